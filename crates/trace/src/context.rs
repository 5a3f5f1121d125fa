//! The W3C `traceparent` header: what it holds, how it is read and written.
//!
//! `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01` is version `00`, a 128-bit trace
//! id shared by every hop of one request, a 64-bit id of the span that made this call (the
//! receiver's parent), and flags (bit 0: the caller records this trace). Parsing follows the
//! specification's rules for receivers: lower-case hex only, all-zero ids are invalid,
//! version `ff` is invalid, and a later version is read by its first 55 characters when what
//! follows starts with `-` (so a newer caller still continues the trace). Anything else is
//! "no header": the receiver starts a new trace, it never refuses the request.

use std::fmt;

/// A trace's id: never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

/// A span's id: never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

/// One hop's trace context: the trace it belongs to and the span that stands for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Bit 0 (`sampled`): the caller records this trace. Passed on unchanged.
    pub flags: u8,
}

/// The length of a version-00 header, and of the part of a later version's that is read.
const HEADER_LEN: usize = 55;
const SAMPLED: u8 = 0x01;

impl TraceId {
    fn random() -> TraceId {
        TraceId(rand::random::<u128>().max(1))
    }
}

impl SpanId {
    fn random() -> SpanId {
        SpanId(rand::random::<u64>().max(1))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl TraceParent {
    /// A new trace, with this process recording it: for a request that came without one.
    pub fn root() -> TraceParent {
        TraceParent { trace_id: TraceId::random(), span_id: SpanId::random(), flags: SAMPLED }
    }

    /// The context of a new span in the same trace (this hop's, for a received parent).
    pub fn child(&self) -> TraceParent {
        TraceParent { span_id: SpanId::random(), ..*self }
    }

    /// Reads a `traceparent` header value; `None` when it is not a valid one.
    pub fn parse(header: &str) -> Option<TraceParent> {
        // Slicing below is by byte: anything but ASCII is not a header anyway.
        let b = header.as_bytes();
        if !header.is_ascii() || b.len() < HEADER_LEN {
            return None;
        }
        let version = hex_field(&header[0..2])?;
        match version {
            0xff => return None,
            0 if b.len() != HEADER_LEN => return None,
            _ if b.len() > HEADER_LEN && b[HEADER_LEN] != b'-' => return None,
            _ => {}
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = hex_field(&header[3..35])?;
        let span_id = u64::try_from(hex_field(&header[36..52])?).ok()?;
        let flags = u8::try_from(hex_field(&header[53..55])?).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceParent { trace_id: TraceId(trace_id), span_id: SpanId(span_id), flags })
    }
}

/// Lower-case hex digits only (the specification's alphabet; `from_str_radix` alone would also
/// take upper case and a leading `+`).
fn hex_field(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

impl fmt::Display for TraceParent {
    /// The header value, version 00.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_the_specifications_example() {
        let t = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), EXAMPLE);
    }

    #[test]
    fn refuses_what_the_specification_says_to_ignore() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let t = TraceParent::parse(later).expect("read as version 00");
        // Passed on as the version this process speaks.
        assert_eq!(t.to_string(), EXAMPLE);
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let root = TraceParent::root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.flags, root.flags);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceParent::root().trace_id, root.trace_id);
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back(t in 1u128.., s in 1u64.., flags: u8) {
            let tp = TraceParent { trace_id: TraceId(t), span_id: SpanId(s), flags };
            prop_assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
        }

        #[test]
        fn no_input_panics(s in "\\PC{0,80}") {
            let _ = TraceParent::parse(&s);
        }
    }
}
