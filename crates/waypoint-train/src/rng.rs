//! The trainer's pseudo-random numbers: SplitMix64 to expand a seed, xoshiro256** for streams.
//! Both are tiny, fully specified and reproducible on every platform; the whole state of a stream
//! is four `u64`s, which is what the trainer state saves to continue bit for bit.
//!
//! It must not read any outside source of randomness (the OS, the clock): every number follows from
//! a seed or a saved state. What each stream is for is the callers' business.

/// SplitMix64 (Steele, Lea, Flood 2014): turns one `u64` seed into well-mixed `u64`s. Used only
/// to seed [`Xoshiro256`] streams.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next output.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// xoshiro256** 1.0 (Blackman, Vigna 2018). Its state is public as [`Xoshiro256::state`] so a
/// checkpoint can hold it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// A stream for `seed` and `stream` (a constant naming what the numbers are for), seeded
    /// through SplitMix64 as the xoshiro authors recommend.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut sm = SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        // SplitMix64 never gives four zeros in a row, the one state xoshiro must avoid.
        Xoshiro256 { s }
    }

    /// A stream continuing from a saved state; `None` for the all-zero state, which is invalid.
    pub fn from_state(s: [u64; 4]) -> Option<Self> {
        (s != [0; 4]).then_some(Xoshiro256 { s })
    }

    /// The full state.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// The next output.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift with rejection: exact.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform `f32` in `[-1, 1)`, from the top 24 bits (every value exactly representable).
    pub fn symmetric_f32(&mut self) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32);
        2.0 * unit - 1.0
    }

    /// Fills `out` with random bytes, 8 at a time, little-endian.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bytes = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&bytes[..rest.len()]);
        }
    }

    /// Shuffles `items` in place (Fisher–Yates, from the back).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (the reference C implementation).
        let mut sm = SplitMix64::new(0);
        assert_eq!(sm.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(sm.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn xoshiro_matches_the_reference_step() {
        // xoshiro256** from state [1, 2, 3, 4]: the reference implementation's first outputs.
        let mut x = Xoshiro256::from_state([1, 2, 3, 4]).unwrap();
        assert_eq!(x.next_u64(), 11520);
        assert_eq!(x.next_u64(), 0);
        assert_eq!(x.next_u64(), 1_509_978_240);
    }

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = Xoshiro256::new(7, 1);
        a.next_u64();
        let mut b = Xoshiro256::from_state(a.state()).unwrap();
        assert_eq!(a.next_u64(), b.next_u64());
        assert!(Xoshiro256::from_state([0; 4]).is_none());
    }

    #[test]
    fn below_stays_in_range_and_shuffle_is_a_permutation() {
        let mut x = Xoshiro256::new(1, 2);
        assert!((0..1000).all(|_| x.below(7) < 7));
        let mut v: Vec<u32> = (0..100).collect();
        x.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
