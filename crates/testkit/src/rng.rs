//! Deterministic test data shared by the unit tests, the integration tests and the benchmark, so all of them
//! generate the same bytes from the same seed: [`Rng`], and the two kinds of file content every test needs,
//! [`random_bytes`] (incompressible, like media or compressed archives) and [`text_bytes`] (compressible,
//! like source code or logs).

/// Deterministic, fast pseudo-random numbers (xorshift64*): generating a GiB takes well under a second, and the
/// bytes do not compress, like media or already-compressed data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant for benchmark data.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Incompressible bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// Words from a small vocabulary: compresses about 3-5x with zstd, like source code or logs, yet does
    /// not repeat at chunk scale (content-defined chunks of it are all distinct).
    pub fn fill_text(&mut self, buf: &mut [u8]) {
        const WORDS: [&[u8]; 16] = [
            b"fn ", b"let ", b"match ", b"return ", b"self", b".await", b"Result<", b"Ok(())",
            b"{\n", b"}\n", b"    ", b"hydrate", b"chunk", b"store", b"cache", b"error",
        ];
        let mut pos = 0;
        while pos < buf.len() {
            let word = WORDS[self.below(WORDS.len() as u64) as usize];
            let n = word.len().min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&word[..n]);
            pos += n;
        }
    }
}

/// `len` incompressible bytes determined by `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed).fill(&mut data);
    data
}

/// `len` bytes of compressible text determined by `seed` (see [`Rng::fill_text`]).
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed).fill_text(&mut data);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_repeat_and_differ() {
        assert_eq!(random_bytes(7, 1000), random_bytes(7, 1000));
        assert_ne!(random_bytes(7, 1000), random_bytes(8, 1000));
        assert_eq!(random_bytes(7, 13), random_bytes(7, 1000)[..13]);
        assert_eq!(text_bytes(1, 500), text_bytes(1, 500));
        assert_ne!(text_bytes(1, 500), text_bytes(2, 500));
    }

    #[test]
    fn text_compresses_and_random_does_not() {
        let text = text_bytes(3, 1 << 20);
        assert!(text.is_ascii());
        let z = zstd::encode_all(&text[..], 3).unwrap();
        assert!(
            z.len() * 3 < text.len(),
            "text: {} -> {}",
            text.len(),
            z.len()
        );
        let random = random_bytes(3, 1 << 20);
        let z = zstd::encode_all(&random[..], 3).unwrap();
        assert!(
            z.len() >= random.len(),
            "random: {} -> {}",
            random.len(),
            z.len()
        );
    }
}
