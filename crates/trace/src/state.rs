//! The W3C `tracestate` header: vendor data that travels with `traceparent`, passed on as it
//! came (ringkv adds no entry of its own).
//!
//! **Why pass it on.** A tracing system may keep what it needs to continue a trace there (a
//! sampling decision, a tenant, its own parent id). A proxy that drops it breaks that
//! system's trace at the proxy, which is what the router would be for every request.
//!
//! **What is passed on.** The specification lets a participant that does not understand the
//! entries forward them unchanged, and says what to do with what cannot be trusted: a
//! `tracestate` is ignored when `traceparent` was not valid (the layer checks that first), and
//! a list that does not parse (a malformed key or value, more than 32 members, a key twice) is
//! dropped whole, never repaired. Several header lines are one list, joined with commas. At
//! most [`TRACESTATE_BYTES_MAX`] are passed on; a longer list is cut the way the specification
//! suggests: members over 128 bytes first, then from the end. Empty members are dropped.

use std::fmt;

/// Bytes of `tracestate` passed on at most (the specification asks participants to pass on at
/// least 512, and that is what bounds what one request may make this process forward).
pub const TRACESTATE_BYTES_MAX: usize = 512;
/// List members at most: a longer list is invalid.
const MEMBERS_MAX: usize = 32;
/// Members longer than this are the first to go when a list must be cut.
const MEMBER_BYTES_LONG: usize = 128;

/// A valid `tracestate` list, as it will be sent on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceState(http::HeaderValue);

impl TraceState {
    /// The `tracestate` of a request with all its header lines (`None` if it has none, or the
    /// list is not valid).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceState> {
        let mut members: Vec<&str> = Vec::new();
        for line in headers.get_all(crate::TRACESTATE_HEADER) {
            let line = line.to_str().ok()?;
            for member in line.split(',') {
                let member = member.trim_matches(|c| c == ' ' || c == '\t');
                if member.is_empty() {
                    continue;
                }
                if members.len() == MEMBERS_MAX || !valid_member(member) {
                    return None;
                }
                members.push(member);
            }
        }
        let mut keys: Vec<&str> =
            members.iter().filter_map(|m| m.split_once('=')).map(|(k, _)| k).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        let members = cut(members);
        if members.is_empty() {
            return None;
        }
        let mut v = http::HeaderValue::from_str(&members.join(",")).ok()?;
        // Like `traceparent`, kept out of HTTP/2's header table (see `crate::inject`).
        v.set_sensitive(true);
        Some(TraceState(v))
    }

    /// The header value to send.
    pub fn header_value(&self) -> &http::HeaderValue {
        &self.0
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

/// Members that fit in [`TRACESTATE_BYTES_MAX`] joined with commas: the long ones go first,
/// then the last ones.
fn cut(mut members: Vec<&str>) -> Vec<&str> {
    let joined = |m: &[&str]| m.iter().map(|s| s.len()).sum::<usize>() + m.len().saturating_sub(1);
    if joined(&members) <= TRACESTATE_BYTES_MAX {
        return members;
    }
    members.retain(|m| m.len() <= MEMBER_BYTES_LONG);
    while joined(&members) > TRACESTATE_BYTES_MAX {
        members.pop();
    }
    members
}

/// `key=value` as the specification's grammar has it.
fn valid_member(member: &str) -> bool {
    let Some((key, value)) = member.split_once('=') else {
        return false;
    };
    valid_key(key) && valid_value(value)
}

fn key_char(c: u8) -> bool {
    matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` (a lower-case letter, then up to 255 key characters) or `tenant@system`
/// (a tenant of up to 241 characters starting with a letter or digit; a system of up to 14
/// starting with a letter).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    match key.split_once('@') {
        None => {
            b.len() <= 256
                && b.first().is_some_and(u8::is_ascii_lowercase)
                && b.iter().all(|&c| key_char(c))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            t.len() <= 241
                && t.first().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && t.iter().all(|&c| key_char(c))
                && s.len() <= 14
                && s.first().is_some_and(u8::is_ascii_lowercase)
                && s.iter().all(|&c| key_char(c))
        }
    }
}

/// Up to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter().all(|&c| matches!(c, 0x20..=0x7e) && c != b',' && c != b'=')
        && b.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(lines: &[&str]) -> Option<String> {
        let mut h = http::HeaderMap::new();
        for l in lines {
            h.append(crate::TRACESTATE_HEADER, http::HeaderValue::from_str(l).unwrap());
        }
        TraceState::from_headers(&h).map(|s| s.to_string())
    }

    #[test]
    fn the_specifications_examples_pass_unchanged() {
        assert_eq!(
            state(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        // Several lines are one list; blanks around members and empty members go.
        assert_eq!(
            state(&["rojo=00f067aa0ba902b7 ,", "congo=t61rcWkgMzE, ,fw529a3039@dt=1"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,fw529a3039@dt=1")
        );
        assert_eq!(state(&[]), None);
        assert_eq!(state(&[" , "]), None);
    }

    #[test]
    fn an_invalid_list_is_dropped_whole() {
        for bad in [
            "Rojo=1",               // upper-case key
            "rojo",                 // no value
            "rojo=",                // empty value
            "rojo=a=b",             // '=' in the value
            "rojo=1,rojo=2",        // a key twice
            "1abc=1",               // a simple key starts with a letter
            "t@Sys=1",              // upper-case system
            "t@s234567890123456=1", // system too long
            "ro jo=1",              // a space in the key
        ] {
            let Ok(v) = http::HeaderValue::from_str(bad) else { continue };
            let mut h = http::HeaderMap::new();
            h.insert(crate::TRACESTATE_HEADER, v);
            assert_eq!(TraceState::from_headers(&h), None, "{bad:?}");
        }
        let mut h = http::HeaderMap::new();
        h.insert(crate::TRACESTATE_HEADER, http::HeaderValue::from_bytes(b"rojo=\xe9").unwrap());
        assert_eq!(TraceState::from_headers(&h), None, "not ASCII");
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(state(&[&many.join(",")]), None, "33 members");
        let most: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert_eq!(state(&[&most.join(",")]), Some(most.join(",")), "32 members");
    }

    #[test]
    fn a_long_list_loses_its_long_members_first_then_its_last() {
        let long = format!("big={}", "x".repeat(200));
        let members: Vec<String> =
            (0..40).map(|i| format!("k{i:02}={}", "v".repeat(20))).take(30).collect();
        let mut all = vec![long.clone()];
        all.extend(members.iter().cloned());
        let got = state(&[&all.join(",")]).unwrap();
        assert!(got.len() <= TRACESTATE_BYTES_MAX, "{} bytes", got.len());
        assert!(!got.contains("big="), "the long member goes first");
        assert!(got.starts_with("k00="), "the first members stay: {got}");
        assert!(!got.contains("k29="), "the last ones go: {got}");
    }

    proptest! {
        #[test]
        fn what_is_passed_on_is_valid_and_bounded(s in "[a-z0-9=,@ _*/-]{0,700}") {
            let mut h = http::HeaderMap::new();
            h.insert(crate::TRACESTATE_HEADER, http::HeaderValue::from_str(&s).unwrap());
            if let Some(t) = TraceState::from_headers(&h) {
                let out = t.to_string();
                prop_assert!(out.len() <= TRACESTATE_BYTES_MAX);
                let mut again = http::HeaderMap::new();
                again.insert(crate::TRACESTATE_HEADER, t.header_value().clone());
                prop_assert_eq!(TraceState::from_headers(&again).map(|t| t.to_string()), Some(out));
            }
        }
    }
}
