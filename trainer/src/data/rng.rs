//! The loader's own random numbers.
//!
//! Sample order and augmentation must replay exactly from a checkpoint, on any machine and after any
//! dependency upgrade, so they come from this small, fully specified generator (SplitMix64, which passes
//! BigCrush) rather than from a crate whose streams may change between versions. Every draw is keyed by
//! what it is for (a domain tag) and where it is (seed, stream, epoch, window or sample index).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Domain tags: one per kind of decision, so no two decisions share a stream.
pub(crate) const TAG_EPOCH: u64 = 1;
pub(crate) const TAG_WINDOW: u64 = 2;
pub(crate) const TAG_CHOOSE: u64 = 3;
pub(crate) const TAG_AUGMENT: u64 = 4;

/// The SplitMix64 finaliser: a bijective 64-bit mix.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash a sequence of words into one (order-sensitive).
pub(crate) fn hash_words(words: &[u64]) -> u64 {
    let mut s = 0x6A09_E667_F3BC_C908u64;
    for &w in words {
        s = mix(s.wrapping_add(GOLDEN) ^ w);
    }
    s
}

/// Hash bytes (for fingerprints of names and paths).
pub(crate) fn hash_bytes(mut acc: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        acc = mix(acc.wrapping_add(GOLDEN) ^ u64::from_le_bytes(word));
    }
    mix(acc ^ bytes.len() as u64)
}

/// A SplitMix64 stream.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The stream keyed by `words`.
    pub(crate) fn keyed(words: &[u64]) -> Self {
        Self(hash_words(words))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method); `n` must be positive.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = Rng::keyed(&[1, 2, 3]);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn keyed_streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).scan(Rng::keyed(&[5, 1]), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).scan(Rng::keyed(&[5, 1]), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..4).scan(Rng::keyed(&[1, 5]), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
