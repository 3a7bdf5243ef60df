//! Holding input that arrives in pieces until the rest comes: the start of
//! a frame ([`framing`](crate::framing)), the start of a line
//! ([`lines`](crate::lines)).
//!
//! *Invariant:* a held buffer grows with the bytes that arrived, doubling
//! (from [`MIN_HOLD`]) so that input trickling in costs few reallocations,
//! and never past the bound its caller gives, which the caller checked
//! first. What a peer *announced* never decides an allocation by itself.

/// The first allocation for held input (unless the bound is smaller):
/// small enough that thousands of peers each holding a few bytes cost
/// little, large enough that input trickling in is not reallocated for
/// every byte.
pub const MIN_HOLD: usize = 64;

/// Appends `bytes` to `buf`. When its capacity is short, it becomes twice
/// what it was (at least [`MIN_HOLD`], at least what is held now), but
/// never more than `most`; the caller makes sure that what is held fits
/// within `most`.
pub fn grow_within(buf: &mut Vec<u8>, bytes: &[u8], most: usize) {
    let held = buf.len() + bytes.len();
    debug_assert!(held <= most, "{held} bytes held, at most {most} allowed");
    if buf.capacity() < held {
        let wanted = (2 * buf.capacity())
            .max(MIN_HOLD)
            .max(held)
            .min(most)
            .max(held);
        buf.reserve_exact(wanted - buf.len());
    }
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_buffer_doubles_from_the_minimum_and_stops_at_the_bound() {
        let mut buf = Vec::new();
        grow_within(&mut buf, b"a", 1000);
        assert_eq!(buf.capacity(), MIN_HOLD);
        grow_within(&mut buf, &[b'b'; MIN_HOLD], 1000);
        assert_eq!(buf.capacity(), 2 * MIN_HOLD);
        grow_within(&mut buf, &[b'c'; 500], 1000);
        assert_eq!(buf.capacity(), 565);
        grow_within(&mut buf, &[b'd'; 435], 1000);
        assert_eq!((buf.len(), buf.capacity()), (1000, 1000));
        // A small bound is never exceeded, even by the minimum.
        let mut small = Vec::new();
        grow_within(&mut small, b"abc", 12);
        assert_eq!(small.capacity(), 12);
    }
}
