//! Grants, identities, and the one question asked of them: does this identity hold what this
//! request needs?
//!
//! A grant is an access (read, write, or admin, which includes both) on a resource: the keys
//! under a prefix, the topics whose names start with a prefix, or the cluster. Admin on the
//! cluster makes a superuser: every key, every topic, and the admin calls (leader transfer,
//! snapshots, checksums, node drain/remove/activate/weight).
//!
//! A range of keys (a scan, a prefix watch) is allowed when one grant's prefix covers all of
//! it. Two grants that together cover a range do not combine: a scan across the boundary of
//! two prefixes must be split by the caller (rare, and the simple rule is easy to audit).

use std::fmt;

/// A set of rights on one resource: `READ`, `WRITE`, and `ADMIN` (topic create/delete, or
/// the cluster's admin calls), combined with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Access(u8);

impl Access {
    pub const NONE: Access = Access(0);
    pub const READ: Access = Access(1);
    pub const WRITE: Access = Access(2);
    pub const READ_WRITE: Access = Access(3);
    /// Admin includes read and write on the same resource.
    pub const ADMIN: Access = Access(7);

    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any right at all is held (what looking a topic up needs).
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Parses a policy's spelling: `read`, `write`, `readwrite`, `admin`.
    pub fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "read" => Access::READ,
            "write" => Access::WRITE,
            "readwrite" => Access::READ_WRITE,
            "admin" => Access::ADMIN,
            _ => return None,
        })
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match *self {
            Access::NONE => "nothing",
            Access::READ => "read",
            Access::WRITE => "write",
            Access::READ_WRITE => "readwrite",
            Access::ADMIN => "admin",
            // Only the values above are ever built (`parse` and the constants).
            _ => "some access",
        })
    }
}

/// What a grant is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum On {
    /// Keys starting with these bytes (empty: every key).
    Keys(Vec<u8>),
    /// Topics whose names start with this (empty: every topic).
    Topics(String),
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub on: On,
    pub access: Access,
}

/// What one request needs, one resource at a time (see [`crate::needs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    Key(&'a [u8], Access),
    /// Keys in `[lo, hi)`; `hi` `None` is the end of the key space.
    KeyRange {
        lo: &'a [u8],
        hi: Option<&'a [u8]>,
        access: Access,
    },
    /// `Access::NONE` means "any grant on it" (looking a topic up, which a writer needs too).
    Topic(&'a str, Access),
    Cluster,
}

/// Who a caller is and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's or certificate's subject, as the policy names it (`node` for nodes).
    pub subject: String,
    pub grants: Vec<Grant>,
    /// Admin on the cluster: allowed everything.
    pub superuser: bool,
    /// May name another caller ([`crate::CALLER_SUBJECT_HEADER`]): routers.
    pub delegate: bool,
}

impl Identity {
    pub fn new(subject: impl Into<String>, grants: Vec<Grant>, delegate: bool) -> Identity {
        let superuser =
            grants.iter().any(|g| g.on == On::Cluster && g.access.contains(Access::ADMIN));
        Identity { subject: subject.into(), grants, superuser, delegate }
    }

    /// A node of the cluster (a verified node certificate).
    pub fn node() -> Identity {
        Identity::new("node", vec![Grant { on: On::Cluster, access: Access::ADMIN }], true)
    }

    pub fn allows(&self, need: &Need<'_>) -> bool {
        if self.superuser {
            return true;
        }
        self.grants.iter().any(|g| match (&g.on, need) {
            (On::Keys(p), Need::Key(k, a)) => k.starts_with(p) && g.access.contains(*a),
            (On::Keys(p), Need::KeyRange { lo, hi, access }) => {
                g.access.contains(*access) && covers(p, lo, *hi)
            }
            (On::Topics(p), Need::Topic(t, a)) => {
                t.starts_with(p.as_str()) && g.access.contains(*a) && g.access.any()
            }
            _ => false,
        })
    }

    /// Whether this identity may see that topic exists (any grant on it): what lists filter on.
    pub fn sees_topic(&self, topic: &str) -> bool {
        self.allows(&Need::Topic(topic, Access::NONE))
    }
}

/// Whether every key in `[lo, hi)` starts with `prefix`.
fn covers(prefix: &[u8], lo: &[u8], hi: Option<&[u8]>) -> bool {
    if lo < prefix {
        return false;
    }
    match prefix_end(prefix) {
        // Every key from `prefix` on starts with it (an empty or all-0xFF prefix).
        None => true,
        Some(end) => hi.is_some_and(|h| h <= end.as_slice()),
    }
}

/// The first key after every key that starts with `prefix`; `None` when there is none (an
/// empty prefix, or one of 0xFF bytes only).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn app() -> Identity {
        Identity::new(
            "app",
            vec![
                Grant { on: On::Keys(b"orders/".to_vec()), access: Access::READ_WRITE },
                Grant { on: On::Keys(b"config/".to_vec()), access: Access::READ },
                Grant { on: On::Topics("orders.".into()), access: Access::WRITE },
            ],
            false,
        )
    }

    #[test]
    fn keys_need_the_right_access_under_a_granted_prefix() {
        let a = app();
        assert!(a.allows(&Need::Key(b"orders/1", Access::WRITE)));
        assert!(a.allows(&Need::Key(b"orders/1", Access::READ_WRITE)));
        assert!(a.allows(&Need::Key(b"config/x", Access::READ)));
        assert!(!a.allows(&Need::Key(b"config/x", Access::WRITE)));
        assert!(!a.allows(&Need::Key(b"orders", Access::READ)));
        assert!(!a.allows(&Need::Key(b"users/1", Access::READ)));
        assert!(!a.allows(&Need::Cluster));
        assert!(!a.superuser);
    }

    #[test]
    fn ranges_must_lie_within_one_grant() {
        let a = app();
        let r = |lo: &'static [u8], hi: Option<&'static [u8]>| Need::KeyRange {
            lo,
            hi,
            access: Access::READ,
        };
        assert!(a.allows(&r(b"orders/", Some(b"orders0"))));
        assert!(a.allows(&r(b"orders/a", Some(b"orders/b"))));
        assert!(!a.allows(&r(b"orders/", Some(b"orders1"))), "past the prefix");
        assert!(!a.allows(&r(b"orders/", None)), "to the end of the key space");
        assert!(!a.allows(&r(b"order", Some(b"orders0"))), "starts before the prefix");
        let everything = Identity::new(
            "reader",
            vec![Grant { on: On::Keys(Vec::new()), access: Access::READ }],
            false,
        );
        assert!(everything.allows(&r(b"", None)));
    }

    #[test]
    fn topics_and_lookups() {
        let a = app();
        assert!(a.allows(&Need::Topic("orders.eu", Access::WRITE)));
        assert!(!a.allows(&Need::Topic("orders.eu", Access::READ)));
        assert!(a.sees_topic("orders.eu"));
        assert!(!a.sees_topic("payments"));
        assert!(!a.allows(&Need::Topic("orders.eu", Access::ADMIN)));
        assert!(Identity::node().allows(&Need::Topic("anything", Access::ADMIN)));
    }

    proptest! {
        /// A range the check admits holds only keys under the prefix; a range of keys all
        /// under the prefix is admitted.
        #[test]
        fn covers_is_exact(prefix in proptest::collection::vec(any::<u8>(), 0..3),
                           lo in proptest::collection::vec(any::<u8>(), 0..4),
                           key in proptest::collection::vec(any::<u8>(), 0..4)) {
            let end = prefix_end(&prefix);
            if covers(&prefix, &lo, end.as_deref()) {
                prop_assert!(lo >= prefix);
            }
            // A key inside an admitted range starts with the prefix.
            if covers(&prefix, &lo, end.as_deref()) && key >= lo
                && end.as_ref().is_none_or(|e| key < *e) {
                prop_assert!(key.starts_with(&prefix));
            }
            // [prefix, prefix_end) itself is always admitted.
            prop_assert!(covers(&prefix, &prefix, end.as_deref()));
        }
    }
}
