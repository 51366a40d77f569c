//! LEB128 varints, as packs and the browser store's pointer table encode their numbers.

/// Appends `n`.
pub fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Takes one number off the front of `bytes`; `None` if they end first or it overflows.
pub fn get(bytes: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        n |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

/// Appends signed `n`, zigzag-encoded (small magnitudes of either sign stay short).
pub fn put_signed(out: &mut Vec<u8>, n: i64) {
    put(out, ((n << 1) ^ (n >> 63)) as u64);
}

/// Reverses [`put_signed`] on a number taken with [`get`].
pub fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// Takes one signed number ([`put_signed`]) off the front of `bytes`.
pub fn get_signed(bytes: &mut &[u8]) -> Option<i64> {
    get(bytes).map(unzigzag)
}
