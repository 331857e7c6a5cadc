//! The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit big-endian words.
//!
//! Summed four bytes at a time into a wide accumulator, which the compiler turns into
//! vector adds: the sum is the same whatever the word size, as 2^16 is 1 modulo 2^16 - 1.

/// Adds `data` to the running sum `acc` (an odd last byte is padded with a zero byte, so
/// only the last piece of a message may have an odd length).
pub fn checksum_add(acc: u64, data: &[u8]) -> u64 {
    let (words, rest) = data.as_chunks::<4>();
    let mut sum = words.iter().fold(acc, |sum, w| sum + u64::from(u32::from_be_bytes(*w)));
    let (pairs, last) = rest.as_chunks::<2>();
    for pair in pairs {
        sum += u64::from(u16::from_be_bytes(*pair));
    }
    if let Some(&byte) = last.first() {
        sum += u64::from(u16::from_be_bytes([byte, 0]));
    }
    sum
}

/// The checksum to put in a header: the running sum folded to 16 bits, complemented.
pub fn checksum_finish(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's way, a 16-bit word at a time.
    fn by_words(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for w in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
        }
        checksum_finish(sum)
    }

    #[test]
    fn sums_as_rfc_1071_does_for_every_length_and_split() {
        // RFC 1071's example: words 0001 f203 f4f5 f6f7 sum to ddf2 (complement 220d).
        assert_eq!(
            checksum_finish(checksum_add(0, &[0, 1, 0xf2, 3, 0xf4, 0xf5, 0xf6, 0xf7])),
            0x220d
        );
        let data: Vec<u8> =
            (0..2000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in 0..64 {
            assert_eq!(checksum_finish(checksum_add(0, &data[..len])), by_words(&data[..len]));
        }
        assert_eq!(checksum_finish(checksum_add(0, &data)), by_words(&data));
        // Pieces of even length add up to the whole.
        let split = checksum_add(checksum_add(0, &data[..1002]), &data[1002..]);
        assert_eq!(checksum_finish(split), by_words(&data));
        // All ones stays all ones; a sum that folds twice.
        assert_eq!(checksum_finish(checksum_add(0, &[0xff; 65536])), by_words(&[0xff; 65536]));
    }
}
