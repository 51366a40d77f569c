//! What the simulations share: a seeded generator of schedules and of file contents.

/// splitmix64: a tiny deterministic generator, so a seed replays exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        // Words from a small vocabulary: content that repeats, as real assets do.
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let word = self.next() % 64;
            out.extend_from_slice(format!("w{word} ").as_bytes());
        }
        out.truncate(len);
        out
    }

    /// `data` with one to three regions replaced, or new bytes inserted, as a rebuild does.
    pub fn edit(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        for _ in 0..1 + self.below(3) {
            let at = self.below(out.len() + 1);
            let len = self.below(300);
            let n = self.below(300);
            let insert = self.bytes(n);
            let end = (at + len).min(out.len());
            out.splice(at..if self.chance(500) { at } else { end }, insert);
        }
        out
    }
}
