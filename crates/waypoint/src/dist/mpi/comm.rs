//! [`Comm`]: one MPI communicator handle and the few MPI calls waypoint makes on it. Every
//! `unsafe` block of the MPI coordinator lives here. Each call's return code is checked: the
//! communicators waypoint creates (duplicates, never `MPI_COMM_WORLD` itself) are switched to
//! `MPI_ERRORS_RETURN`, so a failure comes back as a message (from `MPI_Error_string`) instead of
//! aborting the process.
//!
//! What this module must not do: decide anything. Message layouts are computed by
//! [`super::layout`], locking and error mapping by [`super::MpiCoordinator`].

use mpi::ffi;
use std::os::raw::{c_char, c_int, c_void};

/// An MPI failure: which call, and MPI's own words.
pub(super) type CallResult<T> = std::result::Result<T, String>;

/// One communicator: `MPI_COMM_WORLD` (never freed) or a duplicate (freed on drop).
pub(super) struct Comm {
    raw: ffi::MPI_Comm,
    owned: bool,
}

// SAFETY: an MPI_Comm is an opaque handle owned by the MPI library. The session is initialised
// with MPI_THREAD_MULTIPLE (checked before any Comm exists), under which any thread may call MPI
// with any handle; MpiCoordinator keeps each Comm behind a Mutex, so one communicator is never
// used by two threads at once.
unsafe impl Send for Comm {}

impl Comm {
    /// `MPI_COMM_WORLD` itself, as the program's other MPI users see it (its error handler is
    /// left alone): only to be [duplicated](Comm::duplicate). MPI must be initialised.
    pub(super) fn world() -> Comm {
        // SAFETY: reading an extern constant that the rsmpi shim initialises statically.
        let raw = unsafe { ffi::RSMPI_COMM_WORLD };
        Comm { raw, owned: false }
    }

    fn return_errors(&self) -> CallResult<()> {
        // SAFETY: a valid communicator and a predefined error handler.
        let code = unsafe { ffi::MPI_Comm_set_errhandler(self.raw, ffi::RSMPI_ERRORS_RETURN) };
        check("MPI_Comm_set_errhandler", code)
    }

    /// This process's rank in the communicator.
    pub(super) fn rank(&self) -> CallResult<u64> {
        let mut rank: c_int = -1;
        // SAFETY: a valid communicator; `rank` outlives the call.
        let code = unsafe { ffi::MPI_Comm_rank(self.raw, &mut rank) };
        check("MPI_Comm_rank", code)?;
        u64::try_from(rank).map_err(|_| format!("MPI_Comm_rank returned {rank}"))
    }

    /// The number of processes in the communicator.
    pub(super) fn size(&self) -> CallResult<u64> {
        let mut size: c_int = 0;
        // SAFETY: as in `rank`.
        let code = unsafe { ffi::MPI_Comm_size(self.raw, &mut size) };
        check("MPI_Comm_size", code)?;
        u64::try_from(size).map_err(|_| format!("MPI_Comm_size returned {size}"))
    }

    /// `MPI_Barrier`.
    pub(super) fn barrier(&self) -> CallResult<()> {
        // SAFETY: a valid communicator.
        let code = unsafe { ffi::MPI_Barrier(self.raw) };
        check("MPI_Barrier", code)
    }

    /// Every process's `value`, indexed by rank (`MPI_Allgather` of one `u64`).
    pub(super) fn all_gather_u64(&self, value: u64, size: usize) -> CallResult<Vec<u64>> {
        let mut all = vec![0u64; size];
        // SAFETY: one u64 sent from a live local, `size` u64s received into a buffer of exactly
        // that many (size is the communicator's size); the datatype constant is static.
        let code = unsafe {
            ffi::MPI_Allgather(
                (&raw const value).cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                all.as_mut_ptr().cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                self.raw,
            )
        };
        check("MPI_Allgather", code)?;
        Ok(all)
    }

    /// `MPI_Allgatherv` of bytes: `data` from this process, everyone's into `out` at
    /// `displs[r]..displs[r] + counts[r]`.
    ///
    /// The caller guarantees, from the lengths gathered before: `counts.len() == displs.len() ==`
    /// the communicator's size, `counts[rank] == data.len()`, and `out` covers every range.
    pub(super) fn all_gather_bytes(
        &self,
        data: &[u8],
        counts: &[c_int],
        displs: &[c_int],
        out: &mut [u8],
    ) -> CallResult<()> {
        let fits = counts.iter().zip(displs).all(|(&c, &d)| {
            usize::try_from(c)
                .ok()
                .zip(usize::try_from(d).ok())
                .and_then(|(c, d)| c.checked_add(d))
                .is_some_and(|end| end <= out.len())
        });
        if !fits || counts.len() != displs.len() {
            return Err("MPI_Allgatherv: the receive layout does not fit the buffer".into());
        }
        let send_count = c_int::try_from(data.len())
            .map_err(|_| format!("MPI_Allgatherv: {} bytes exceed MPI's count", data.len()))?;
        // SAFETY: the send buffer is `data` (send_count bytes); every receive range lies within
        // `out` (checked above); counts and displs have one entry per rank (caller).
        let code = unsafe {
            ffi::MPI_Allgatherv(
                data.as_ptr().cast::<c_void>(),
                send_count,
                ffi::RSMPI_UINT8_T,
                out.as_mut_ptr().cast::<c_void>(),
                counts.as_ptr(),
                displs.as_ptr(),
                ffi::RSMPI_UINT8_T,
                self.raw,
            )
        };
        check("MPI_Allgatherv", code)
    }

    /// Every process's `value` on `root`, indexed by rank (`MPI_Gather` of one `u64`); empty
    /// elsewhere.
    pub(super) fn gather_u64(
        &self,
        root: c_int,
        value: u64,
        size: usize,
        is_root: bool,
    ) -> CallResult<Vec<u64>> {
        let mut all = vec![0u64; if is_root { size } else { 0 }];
        // SAFETY: one u64 sent from a live local; on the root `size` u64s received into a buffer
        // of exactly that many (size is the communicator's size), elsewhere the receive buffer is
        // not read (MPI ignores it off the root); root is within the communicator (caller).
        let code = unsafe {
            ffi::MPI_Gather(
                (&raw const value).cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                all.as_mut_ptr().cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                root,
                self.raw,
            )
        };
        check("MPI_Gather", code)?;
        Ok(all)
    }

    /// `MPI_Gatherv` of bytes: `data` from this process; on the root, everyone's into `out` at
    /// `displs[r]..displs[r] + counts[r]` (`counts`, `displs` and `out` are ignored elsewhere).
    ///
    /// The caller guarantees, on the root, from the lengths gathered before: one entry per rank in
    /// `counts` and `displs`, `counts[rank] == data.len()`.
    pub(super) fn gather_bytes(
        &self,
        root: c_int,
        data: &[u8],
        receive: Option<(&[c_int], &[c_int], &mut [u8])>,
    ) -> CallResult<()> {
        let send_count = c_int::try_from(data.len())
            .map_err(|_| format!("MPI_Gatherv: {} bytes exceed MPI's count", data.len()))?;
        let (counts, displs, out) = match receive {
            Some((counts, displs, out)) => {
                if !fits(counts, displs, out.len()) {
                    return Err("MPI_Gatherv: the receive layout does not fit the buffer".into());
                }
                (counts.as_ptr(), displs.as_ptr(), out.as_mut_ptr())
            }
            None => (std::ptr::null(), std::ptr::null(), std::ptr::null_mut()),
        };
        // An empty slice's pointer is 1, which is Open MPI's MPI_IN_PLACE: point elsewhere.
        let spare = 0u8;
        let send = if data.is_empty() {
            &raw const spare
        } else {
            data.as_ptr()
        };
        // SAFETY: the send buffer is `data` (send_count bytes); on the root every receive range
        // lies within `out` (checked above) and counts and displs have one entry per rank
        // (caller); off the root the receive arguments are not significant.
        let code = unsafe {
            ffi::MPI_Gatherv(
                send.cast::<c_void>(),
                send_count,
                ffi::RSMPI_UINT8_T,
                out.cast::<c_void>(),
                counts,
                displs,
                ffi::RSMPI_UINT8_T,
                root,
                self.raw,
            )
        };
        check("MPI_Gatherv", code)
    }

    /// `values[r]` from `root` on each rank `r` (`MPI_Scatter` of one `u64`; `values` has one
    /// entry per rank on the root and is ignored elsewhere).
    pub(super) fn scatter_u64(&self, root: c_int, values: &[u64]) -> CallResult<u64> {
        let mut value = 0u64;
        // SAFETY: on the root `values` holds one u64 per rank (caller); one u64 received into a
        // live local; root is within the communicator (caller).
        let code = unsafe {
            ffi::MPI_Scatter(
                values.as_ptr().cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                (&raw mut value).cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                root,
                self.raw,
            )
        };
        check("MPI_Scatter", code)?;
        Ok(value)
    }

    /// `MPI_Scatterv` of bytes: on the root, `send` cut at `counts`/`displs`; each rank receives
    /// its range into `out`, whose length it learnt from [`Comm::scatter_u64`].
    pub(super) fn scatter_bytes(
        &self,
        root: c_int,
        send: Option<(&[u8], &[c_int], &[c_int])>,
        out: &mut [u8],
    ) -> CallResult<()> {
        let receive_count = c_int::try_from(out.len())
            .map_err(|_| format!("MPI_Scatterv: {} bytes exceed MPI's count", out.len()))?;
        let (buffer, counts, displs) = match send {
            Some((buffer, counts, displs)) => {
                if !fits(counts, displs, buffer.len()) {
                    return Err("MPI_Scatterv: the send layout does not fit the buffer".into());
                }
                (buffer.as_ptr(), counts.as_ptr(), displs.as_ptr())
            }
            None => (std::ptr::null(), std::ptr::null(), std::ptr::null()),
        };
        // An empty slice's pointer is 1, which is Open MPI's MPI_IN_PLACE: point elsewhere.
        let mut spare = 0u8;
        let receive = if out.is_empty() {
            &raw mut spare
        } else {
            out.as_mut_ptr()
        };
        // SAFETY: on the root every send range lies within `buffer` (checked above), with one
        // count and displacement per rank (caller); off the root they are not significant; the
        // receive buffer is `out` (receive_count bytes).
        let code = unsafe {
            ffi::MPI_Scatterv(
                buffer.cast::<c_void>(),
                counts,
                displs,
                ffi::RSMPI_UINT8_T,
                receive.cast::<c_void>(),
                receive_count,
                ffi::RSMPI_UINT8_T,
                root,
                self.raw,
            )
        };
        check("MPI_Scatterv", code)
    }

    /// `root`'s `value` (`MPI_Bcast` of one `u64`).
    pub(super) fn broadcast_u64(&self, root: c_int, value: u64) -> CallResult<u64> {
        let mut value = value;
        // SAFETY: one u64 in a live local; root is within the communicator (caller).
        let code = unsafe {
            ffi::MPI_Bcast(
                (&raw mut value).cast::<c_void>(),
                1,
                ffi::RSMPI_UINT64_T,
                root,
                self.raw,
            )
        };
        check("MPI_Bcast", code)?;
        Ok(value)
    }

    /// `MPI_Bcast` of `buf`, whose length every process agrees on.
    pub(super) fn broadcast_bytes(&self, root: c_int, buf: &mut [u8]) -> CallResult<()> {
        let count = c_int::try_from(buf.len())
            .map_err(|_| format!("MPI_Bcast: {} bytes exceed MPI's count", buf.len()))?;
        // SAFETY: `count` bytes in `buf`; root is within the communicator (caller).
        let code = unsafe {
            ffi::MPI_Bcast(
                buf.as_mut_ptr().cast::<c_void>(),
                count,
                ffi::RSMPI_UINT8_T,
                root,
                self.raw,
            )
        };
        check("MPI_Bcast", code)
    }

    /// `MPI_Comm_dup` (collective), errors returned on the new communicator too.
    pub(super) fn duplicate(&self) -> CallResult<Comm> {
        // SAFETY: reading an extern constant that the rsmpi shim initialises statically.
        let mut raw = unsafe { ffi::RSMPI_COMM_NULL };
        // SAFETY: a valid communicator; `raw` outlives the call and receives the new handle.
        let code = unsafe { ffi::MPI_Comm_dup(self.raw, &mut raw) };
        check("MPI_Comm_dup", code)?;
        let comm = Comm { raw, owned: true };
        comm.return_errors()?;
        Ok(comm)
    }
}

/// Whether every range `displs[r]..displs[r] + counts[r]` lies within `len` bytes.
fn fits(counts: &[c_int], displs: &[c_int], len: usize) -> bool {
    counts.len() == displs.len()
        && counts.iter().zip(displs).all(|(&c, &d)| {
            usize::try_from(c)
                .ok()
                .zip(usize::try_from(d).ok())
                .and_then(|(c, d)| c.checked_add(d))
                .is_some_and(|end| end <= len)
        })
}

/// `MPI_Abort` on `MPI_COMM_WORLD`: the launcher ends every rank of the job with `code`. Falls back
/// to aborting this process alone if MPI returns.
pub(super) fn abort_job(code: c_int) -> ! {
    // SAFETY: a predefined communicator; MPI_Abort may be called from any thread under
    // MPI_THREAD_MULTIPLE, even while other threads are inside collectives.
    unsafe {
        ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::abort()
}

impl Drop for Comm {
    fn drop(&mut self) {
        // A duplicate is freed while MPI is still up: every Comm lives inside an MpiCoordinator
        // that holds the session, which finalises MPI only once the last coordinator is gone.
        if self.owned && !mpi::environment::is_finalized() {
            // SAFETY: a communicator this Comm created and nobody else holds.
            let code = unsafe { ffi::MPI_Comm_free(&mut self.raw) };
            if let Err(reason) = check("MPI_Comm_free", code) {
                tracing::warn!(%reason, "freeing a duplicated MPI communicator failed");
            }
        }
    }
}

/// `Ok` for `MPI_SUCCESS`, else the call's name and MPI's description of `code`.
fn check(call: &str, code: c_int) -> CallResult<()> {
    if code == ffi::MPI_SUCCESS as c_int {
        return Ok(());
    }
    Err(format!("{call} failed: {}", error_string(code)))
}

/// MPI's text for an error code (`MPI_Error_string`), or the bare code.
fn error_string(code: c_int) -> String {
    let mut text = vec![0 as c_char; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: the buffer holds MPI_MAX_ERROR_STRING characters as the standard requires.
    let status = unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr(), &mut len) };
    let len = usize::try_from(len).unwrap_or(0).min(text.len());
    if status != ffi::MPI_SUCCESS as c_int || len == 0 {
        return format!("MPI error code {code}");
    }
    let bytes: Vec<u8> = text[..len].iter().map(|&c| c as u8).collect();
    format!(
        "{} (MPI error code {code})",
        String::from_utf8_lossy(&bytes)
    )
}
