//! Input limits of the event-stream and watch APIs, checked before anything is proposed.
//!
//! An append becomes one Raft entry, so its limits are the batch write's: at most 1,000 events
//! and 4 MiB, and every event small enough that a read page of the default 1 MiB holds many.

use crate::error::NodeError;
use crate::validate::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use ringkv_placement::topics::PARTITIONS_MAX;
use ringkv_proto::v1::{Event, TopicConfig};
use ringkv_storage::streams::{self, EventData, GROUP_NAME_BYTES_MAX};

pub const APPEND_EVENTS_MAX: usize = 1000;
pub const APPEND_BYTES_MAX: usize = 4 << 20;
pub const HEADERS_MAX: usize = 64;
pub const HEADER_NAME_BYTES_MAX: usize = 256;
pub const HEADER_VALUE_BYTES_MAX: usize = 4 << 10;
pub const READ_EVENTS_DEFAULT: u32 = 1000;
pub const READ_EVENTS_MAX: u32 = 10_000;
pub const READ_BYTES_DEFAULT: u32 = 1 << 20;
pub const READ_BYTES_MAX: u32 = 16 << 20;
pub const SUBSCRIBE_BATCH_DEFAULT: u32 = 500;

pub fn topic(name: &str) -> Result<(), NodeError> {
    ringkv_placement::check_topic_name(name).map_err(|reason| NodeError::invalid("topic", reason))
}

pub fn config(c: Option<&TopicConfig>) -> Result<streams::TopicConfig, NodeError> {
    let c = c.ok_or_else(|| NodeError::invalid("config", "a topic needs a configuration"))?;
    if c.partitions == 0 || c.partitions > PARTITIONS_MAX {
        return Err(NodeError::InvalidArgument {
            field: "config.partitions",
            reason: format!("{} is not between 1 and {PARTITIONS_MAX}", c.partitions),
            limit: Some(u64::from(PARTITIONS_MAX)),
        });
    }
    let r = c.retention.unwrap_or_default();
    Ok(streams::TopicConfig {
        partitions: c.partitions,
        retention: streams::Retention {
            max_age_ms: r.max_age_ms,
            max_bytes: r.max_bytes,
            max_events: r.max_events,
        },
    })
}

pub fn group(name: &str) -> Result<(), NodeError> {
    if name.is_empty() {
        return Err(NodeError::invalid("group", "a consumer group name must not be empty"));
    }
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(NodeError::too_large("group", name.len(), GROUP_NAME_BYTES_MAX));
    }
    Ok(())
}

/// Checks and converts an append's events.
pub fn events(events: Vec<Event>) -> Result<Vec<EventData>, NodeError> {
    if events.is_empty() {
        return Err(NodeError::invalid("events", "an append needs at least one event"));
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(NodeError::InvalidArgument {
            field: "events",
            reason: format!("{} events exceeds the limit of {APPEND_EVENTS_MAX}", events.len()),
            limit: Some(APPEND_EVENTS_MAX as u64),
        });
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if e.key.len() > KEY_BYTES_MAX {
            return Err(NodeError::too_large("events.key", e.key.len(), KEY_BYTES_MAX));
        }
        if e.payload.len() > VALUE_BYTES_MAX {
            return Err(NodeError::too_large("events.payload", e.payload.len(), VALUE_BYTES_MAX));
        }
        if e.headers.len() > HEADERS_MAX {
            return Err(NodeError::InvalidArgument {
                field: "events.headers",
                reason: format!("{} headers exceeds the limit of {HEADERS_MAX}", e.headers.len()),
                limit: Some(HEADERS_MAX as u64),
            });
        }
        let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(e.headers.len());
        for (k, v) in e.headers {
            if k.len() > HEADER_NAME_BYTES_MAX {
                return Err(NodeError::too_large(
                    "events.headers.name",
                    k.len(),
                    HEADER_NAME_BYTES_MAX,
                ));
            }
            if v.len() > HEADER_VALUE_BYTES_MAX {
                return Err(NodeError::too_large(
                    "events.headers.value",
                    v.len(),
                    HEADER_VALUE_BYTES_MAX,
                ));
            }
            headers.push((k, v.to_vec()));
        }
        // Protobuf maps have no order; a fixed one makes every replica store the same bytes.
        headers.sort();
        let data = EventData { key: e.key.to_vec(), payload: e.payload.to_vec(), headers };
        total += data.size() as usize;
        if total > APPEND_BYTES_MAX {
            return Err(NodeError::too_large("events", total, APPEND_BYTES_MAX));
        }
        out.push(data);
    }
    Ok(out)
}

/// A read's page size: (events, bytes).
pub fn read_limits(max_events: u32, max_bytes: u32) -> Result<(usize, u64), NodeError> {
    let events = if max_events == 0 { READ_EVENTS_DEFAULT } else { max_events };
    let bytes = if max_bytes == 0 { READ_BYTES_DEFAULT } else { max_bytes };
    if events > READ_EVENTS_MAX {
        return Err(NodeError::InvalidArgument {
            field: "max_events",
            reason: format!("{events} exceeds the limit of {READ_EVENTS_MAX}"),
            limit: Some(u64::from(READ_EVENTS_MAX)),
        });
    }
    if bytes > READ_BYTES_MAX {
        return Err(NodeError::too_large("max_bytes", bytes as usize, READ_BYTES_MAX as usize));
    }
    Ok((events as usize, u64::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_events_are_refused_with_the_field() {
        let e = events(vec![]).unwrap_err();
        assert!(e.to_string().contains("at least one event"));
        let big = Event { key: vec![0; KEY_BYTES_MAX + 1].into(), ..Default::default() };
        assert!(matches!(
            events(vec![big]),
            Err(NodeError::InvalidArgument { field: "events.key", .. })
        ));
        let many = vec![Event::default(); APPEND_EVENTS_MAX + 1];
        assert!(events(many).is_err());
        assert!(read_limits(READ_EVENTS_MAX + 1, 0).is_err());
        assert_eq!(read_limits(0, 0).unwrap(), (1000, 1 << 20));
        assert!(topic("bad name").is_err());
        assert!(config(Some(&TopicConfig { partitions: 0, retention: None })).is_err());
    }
}
