//! Content-derived seeds. A verdict's sampling seed and its random placement come from a hash
//! of the pair's text, never from its position in a batch, so the same pair judged alone,
//! offline or by the server in any batch gets the same generations.

/// FNV-1a, 64 bit: stable across Rust versions and platforms (std's hasher is not promised to be).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator byte that UTF-8 text never contains keeps ("ab","c") apart from ("a","bc").
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// SplitMix64's finaliser: spreads nearby inputs (vote 0, 1, 2...) over the whole range.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Mixes several words into one.
pub fn mix(words: &[u64]) -> u64 {
    words.iter().fold(0x5851_f42d_4c95_7f2d, |acc, &w| splitmix64(acc ^ splitmix64(w)))
}

/// A uniform draw in [0, 1) from a hash.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_separated() {
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        assert_ne!(mix(&[1, 0]), mix(&[0, 1]));
        let u = unit(mix(&[7]));
        assert!((0.0..1.0).contains(&u));
    }
}
