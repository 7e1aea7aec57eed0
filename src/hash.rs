//! Stable hashes, and digests as text: values every process and every build of this version
//! computes alike (shares of a cluster's tasks, train/test splits, sampling, file digests).

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64-bit) of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_continue(FNV_OFFSET, bytes)
}

/// FNV-1a of several byte strings, each followed by a separator byte, so that ("ab", "c") and
/// ("a", "bc") differ.
pub fn fnv1a64_parts(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(FNV_OFFSET, |h, part| {
        (fnv1a64_continue(h, part) ^ 0xff).wrapping_mul(FNV_PRIME)
    })
}

fn fnv1a64_continue(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// Lower-case hexadecimal of `bytes` (a SHA-256 digest in manifests, locks and `_SUCCESS`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_its_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(fnv1a64_parts(&[b"ab", b"c"]), fnv1a64_parts(&[b"a", b"bc"]));
        // one part: the bytes, then the separator
        let mut h = fnv1a64(b"ab") ^ 0xff;
        h = h.wrapping_mul(FNV_PRIME);
        assert_eq!(fnv1a64_parts(&[b"ab"]), h);
    }

    #[test]
    fn hex_is_lower_case_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
    }
}
