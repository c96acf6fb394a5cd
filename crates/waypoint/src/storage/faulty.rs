//! Fault-injecting wrapper. (Being written.)
/// Environment variable naming a failpoint plan.
pub const FAILPOINT_ENV: &str = "WAYPOINT_FAILPOINT";
/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind { /** fail */ Fail }
/// A plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailpointPlan;
/// The wrapper.
#[derive(Debug)]
pub struct FaultyFs;
