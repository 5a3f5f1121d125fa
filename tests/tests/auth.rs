//! Authorization with real processes: a 3-node TLS cluster and a router, both with the same
//! access policy, and every client RPC tried three ways (table-driven): without a credential
//! (`UNAUTHENTICATED`), as a known caller without the grant (`PERMISSION_DENIED`, and nothing
//! changed), and with the grant (through the router: success; on a node: past authorization,
//! since a node may still answer NOT_LEADER, which is routing's business). Then client
//! certificates as identities (direct and forwarded by the router), a caller that tries to
//! name someone else, and a token revoked while the cluster runs.

use anyhow::{Context, Result, ensure};
use futures::future::BoxFuture;
use ringkv_auth::policy::token_entry;
use ringkv_auth::{AuthChannel, CALLER_SUBJECT_HEADER, Token};
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::events_client::EventsClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::streams_client::StreamsClient;
use ringkv_proto::v1::watch_client::WatchClient;
use ringkv_proto::v1::*;
use ringkv_tests::{Cluster, Tuning, wait_for};
use ringkv_tls::{Dialer, Tls, TlsPaths, Usage};
use std::time::Duration;
use tonic::{Code, Status};

const T: Duration = Duration::from_secs(30);
const OPS: &str = "ops-token";
const WRITER: &str = "writer-token";
const READER: &str = "reader-token";
/// A token the policy knows, with no roles.
const NOBODY: &str = "nobody-token";

fn policy(with_reader: bool) -> String {
    let mut p = String::from(
        r#"
[[role]]
name = "operator"
grants = [{ cluster = true, access = "admin" }]
[[role]]
name = "orders-rw"
grants = [{ keys = "orders/", access = "readwrite" }, { topics = "orders", access = "admin" }]
[[role]]
name = "orders-ro"
grants = [{ keys = "orders/", access = "read" }, { topics = "orders", access = "read" }]

# The harness's and the router's certificates (both name 127.0.0.1 first): the router may
# forward its callers' names.
[[certificate]]
subject = "127.0.0.1"
roles = ["operator"]
delegate = true
[[certificate]]
subject = "orders-app"
roles = ["orders-ro"]
"#,
    );
    p += &token_entry("ops", OPS, &["operator"]);
    p += &token_entry("writer", WRITER, &["orders-rw"]);
    p += &token_entry("nobody", NOBODY, &[]);
    if with_reader {
        p += &token_entry("reader", READER, &["orders-ro"]);
    }
    p
}

type Call = Box<dyn Fn(AuthChannel) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

/// One RPC of the table: who lacks the grant (`None`: any known caller has it), who holds it.
struct Rpc {
    name: &'static str,
    wrong: Option<&'static str>,
    right: &'static str,
    call: Call,
}

macro_rules! rpc {
    ($name:literal, $wrong:expr, $right:expr, $client:ident, $method:ident, $req:expr) => {
        Rpc {
            name: $name,
            wrong: $wrong,
            right: $right,
            call: Box::new(|ch: AuthChannel| {
                Box::pin(async move { $client::new(ch).$method($req).await.map(|_| ()) })
            }),
        }
    };
}

fn bytes(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

fn put_op(key: &str) -> WriteOp {
    WriteOp {
        op: Some(write_op::Op::Put(PutRequest {
            key: bytes(key),
            value: bytes("v"),
            ..Default::default()
        })),
    }
}

fn kv_rpcs() -> Vec<Rpc> {
    let w = Some(READER);
    let r = Some(NOBODY);
    vec![
        rpc!(
            "Put",
            w,
            WRITER,
            KvClient,
            put,
            PutRequest { key: bytes("orders/put"), value: bytes("v"), ..Default::default() }
        ),
        rpc!(
            "Get",
            r,
            READER,
            KvClient,
            get,
            GetRequest { key: bytes("orders/put"), ..Default::default() }
        ),
        rpc!(
            "Delete",
            w,
            WRITER,
            KvClient,
            delete,
            DeleteRequest { key: bytes("orders/put"), ..Default::default() }
        ),
        rpc!(
            "CompareAndSwap",
            w,
            WRITER,
            KvClient,
            compare_and_swap,
            CompareAndSwapRequest {
                key: bytes("orders/cas"),
                expected: Some(Compare { target: Some(compare::Target::MustNotExist(true)) }),
                new_value: bytes("v"),
                ..Default::default()
            }
        ),
        rpc!(
            "Scan",
            r,
            READER,
            KvClient,
            scan,
            ScanRequest { prefix: bytes("orders/"), ..Default::default() }
        ),
        // A continuation token replaces the start key: one below the grant is checked from
        // there (as the node reads), so even a writer of `orders/` is refused.
        rpc!(
            "Scan from a continuation token below the grant",
            Some(WRITER),
            OPS,
            KvClient,
            scan,
            ScanRequest {
                shard_id: Some(0),
                start_key: bytes("orders/"),
                end_key: bytes("orders0"),
                continuation_token: bytes("\u{1}"),
                ..Default::default()
            }
        ),
        rpc!(
            "BatchWrite",
            w,
            WRITER,
            KvClient,
            batch_write,
            BatchWriteRequest {
                // One key: an atomic batch stays in one shard (every key is checked: unit tests).
                ops: vec![put_op("orders/b1")],
                ..Default::default()
            }
        ),
        rpc!(
            "MultiGet",
            r,
            READER,
            KvClient,
            multi_get,
            MultiGetRequest { keys: vec![bytes("orders/b1")], ..Default::default() }
        ),
    ]
}

/// The topic RPCs shared by the router's Events and the node's Streams, on `$client`.
macro_rules! topic_rpcs {
    ($client:ident) => {{
        let (w, r) = (Some(READER), Some(NOBODY));
        vec![
            rpc!(
                "Append",
                w,
                WRITER,
                $client,
                append,
                AppendRequest {
                    topic: "orders.t".into(),
                    partition: Some(0),
                    events: vec![Event { payload: bytes("e"), ..Default::default() }],
                    ..Default::default()
                }
            ),
            rpc!(
                "Read",
                r,
                READER,
                $client,
                read,
                ReadRequest { topic: "orders.t".into(), max_events: 10, ..Default::default() }
            ),
            rpc!(
                "Subscribe",
                r,
                READER,
                $client,
                subscribe,
                SubscribeRequest {
                    topic: "orders.t".into(),
                    start: Some(subscribe_request::Start::Earliest(true)),
                    ..Default::default()
                }
            ),
            rpc!(
                "CommitOffset",
                r,
                READER,
                $client,
                commit_offset,
                CommitOffsetRequest {
                    group: "g".into(),
                    topic: "orders.t".into(),
                    offset: 1,
                    ..Default::default()
                }
            ),
            rpc!(
                "FetchOffset",
                r,
                READER,
                $client,
                fetch_offset,
                FetchOffsetRequest {
                    group: "g".into(),
                    topic: "orders.t".into(),
                    ..Default::default()
                }
            ),
        ]
    }};
}

fn router_rpcs() -> Vec<Rpc> {
    let (w, r) = (Some(READER), Some(NOBODY));
    let mut all = kv_rpcs();
    all.push(rpc!(
        "CreateTopic",
        w,
        WRITER,
        EventsClient,
        create_topic,
        CreateTopicRequest {
            name: "orders.t".into(),
            config: Some(TopicConfig { partitions: 1, ..Default::default() }),
        }
    ));
    all.push(rpc!(
        "DescribeTopic",
        r,
        READER,
        EventsClient,
        describe_topic,
        DescribeTopicRequest { name: "orders.t".into() }
    ));
    all.push(rpc!("ListTopics", None, NOBODY, EventsClient, list_topics, ListTopicsRequest {}));
    all.extend(topic_rpcs!(EventsClient));
    all.push(rpc!(
        "Watch",
        r,
        READER,
        WatchClient,
        watch,
        WatchRequest { key: bytes("orders/"), prefix: true, ..Default::default() }
    ));
    all.push(rpc!(
        "DeleteTopic",
        w,
        WRITER,
        EventsClient,
        delete_topic,
        DeleteTopicRequest { name: "orders.t".into() }
    ));
    all.push(rpc!("GetShardMap", None, NOBODY, AdminClient, get_shard_map, GetShardMapRequest {}));
    all
}

fn node_rpcs() -> Vec<Rpc> {
    let (w, r, a) = (Some(READER), Some(NOBODY), Some(WRITER));
    let mut all = kv_rpcs();
    all.push(rpc!(
        "PutTopic",
        w,
        WRITER,
        StreamsClient,
        put_topic,
        PutTopicRequest {
            name: "orders.n".into(),
            config: Some(TopicConfig { partitions: 1, ..Default::default() }),
        }
    ));
    all.push(rpc!(
        "GetTopics",
        r,
        READER,
        StreamsClient,
        get_topics,
        GetTopicsRequest { name: Some("orders.t".into()) }
    ));
    all.push(rpc!(
        "GetPartition",
        r,
        READER,
        StreamsClient,
        get_partition,
        GetPartitionRequest { topic: "orders.t".into(), partition: 0 }
    ));
    all.push(rpc!(
        "CreatePartition",
        w,
        WRITER,
        StreamsClient,
        create_partition,
        CreatePartitionRequest { topic: "orders.n".into(), partition: 5, ..Default::default() }
    ));
    all.push(rpc!(
        "DropPartition",
        w,
        WRITER,
        StreamsClient,
        drop_partition,
        DropPartitionRequest { topic: "orders.n".into(), partition: 5, ..Default::default() }
    ));
    all.push(rpc!(
        "RemoveTopic",
        w,
        WRITER,
        StreamsClient,
        remove_topic,
        RemoveTopicRequest { name: "orders.n".into(), ..Default::default() }
    ));
    all.extend(topic_rpcs!(StreamsClient));
    all.push(rpc!(
        "Watch",
        r,
        READER,
        StreamsClient,
        watch,
        WatchRequest { key: bytes("orders/"), prefix: true, ..Default::default() }
    ));
    all.push(rpc!("GetShardMap", None, NOBODY, AdminClient, get_shard_map, GetShardMapRequest {}));
    all.push(rpc!("NodeStatus", None, NOBODY, AdminClient, node_status, NodeStatusRequest {}));
    all.push(rpc!("ListNodes", None, NOBODY, AdminClient, list_nodes, ListNodesRequest {}));
    // Admin calls on things that do not exist: past authorization they fail harmlessly.
    all.push(rpc!(
        "ShardChecksum",
        a,
        OPS,
        AdminClient,
        shard_checksum,
        ShardChecksumRequest { shard_id: 999 }
    ));
    all.push(rpc!(
        "TransferLeader",
        a,
        OPS,
        AdminClient,
        transfer_leader,
        TransferLeaderRequest { shard_id: 999, to_node_id: 999 }
    ));
    all.push(rpc!(
        "TriggerSnapshot",
        a,
        OPS,
        AdminClient,
        trigger_snapshot,
        TriggerSnapshotRequest { shard_id: 999, purge_log: false }
    ));
    all.push(rpc!("DrainNode", a, OPS, AdminClient, drain_node, NodeRequest { node_id: 999 }));
    all.push(rpc!("RemoveNode", a, OPS, AdminClient, remove_node, NodeRequest { node_id: 999 }));
    all.push(rpc!(
        "ActivateNode",
        a,
        OPS,
        AdminClient,
        activate_node,
        NodeRequest { node_id: 999 }
    ));
    all.push(rpc!(
        "SetNodeWeight",
        a,
        OPS,
        AdminClient,
        set_node_weight,
        SetNodeWeightRequest { node_id: 999, weight: 2 }
    ));
    all
}

/// A TLS channel to `addr` that presents no client certificate: its only credential is the
/// token its `AuthChannel` adds.
async fn anonymous(c: &Cluster, addr: &str) -> Result<tonic::transport::Channel> {
    let dialer = c.tls.as_ref().context("a TLS cluster")?.anonymous()?;
    let endpoint = dialer.endpoint(addr)?.timeout(Duration::from_secs(20));
    Ok(dialer.connect(&endpoint).await?)
}

fn with(ch: &tonic::transport::Channel, token: &str) -> AuthChannel {
    AuthChannel::new(ch.clone(), Some(&Token::new(token))).expect("a printable token")
}

/// What the cluster holds under `orders/` and which topics exist, read as the operator.
async fn state(router: &tonic::transport::Channel) -> Result<String> {
    let ops = with(router, OPS);
    let scan = KvClient::new(ops.clone())
        .scan(ScanRequest { prefix: bytes("orders/"), ..Default::default() })
        .await?
        .into_inner();
    let topics = EventsClient::new(ops).list_topics(ListTopicsRequest {}).await?.into_inner();
    Ok(format!(
        "{:?} {:?}",
        scan.kvs.iter().map(|kv| (kv.key.clone(), kv.version)).collect::<Vec<_>>(),
        topics.topics.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    ))
}

fn refusal(name: &str, who: &str, r: Result<(), Status>, code: Code) -> Result<()> {
    let e = match r {
        Ok(()) => anyhow::bail!("{name} as {who}: succeeded, expected {code:?}"),
        Err(e) => e,
    };
    ensure!(e.code() == code, "{name} as {who}: {e:?}, expected {code:?}");
    let reason = ringkv_tests::reason(&e);
    let want = if code == Code::Unauthenticated { "UNAUTHENTICATED" } else { "PERMISSION_DENIED" };
    ensure!(reason.as_deref() == Some(want), "{name} as {who}: reason {reason:?}");
    Ok(())
}

/// Runs the table against `addr`: `strict` demands success with the grant.
async fn run_table(
    c: &Cluster,
    addr: &str,
    router: &tonic::transport::Channel,
    rpcs: Vec<Rpc>,
    strict: bool,
) -> Result<()> {
    let ch = anonymous(c, addr).await?;
    for rpc in rpcs {
        let before = state(router).await?;
        let r = (rpc.call)(AuthChannel::plain(ch.clone())).await;
        refusal(rpc.name, "no credential", r, Code::Unauthenticated)?;
        let r = (rpc.call)(with(&ch, "not-a-token-of-this-cluster")).await;
        refusal(rpc.name, "an unknown token", r, Code::Unauthenticated)?;
        if let Some(wrong) = rpc.wrong {
            let r = (rpc.call)(with(&ch, wrong)).await;
            refusal(rpc.name, wrong, r, Code::PermissionDenied)?;
        }
        ensure!(state(router).await? == before, "{}: a refused call changed the cluster", rpc.name);
        let r = (rpc.call)(with(&ch, rpc.right)).await;
        match r {
            Ok(()) => {}
            Err(e) if strict => anyhow::bail!("{} as {}: {e:?}", rpc.name, rpc.right),
            Err(e) => ensure!(
                !matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied),
                "{} as {}: refused by authorization: {e:?}",
                rpc.name,
                rpc.right
            ),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_credential_and_its_grant_on_router_and_node() -> Result<()> {
    let c = Cluster::start_with_policy(3, 4, 3, Tuning::default(), &policy(true)).await?;
    c.wait_for_leaders(T).await?;
    let router = c.start_router("round-robin").await?;
    let router_ch = anonymous(&c, &router.addr).await?;
    run_table(&c, &router.addr, &router_ch, router_rpcs(), true).await.context("router")?;

    // A known caller lists only the topics it holds a grant on.
    EventsClient::new(with(&router_ch, WRITER))
        .create_topic(CreateTopicRequest {
            name: "orders.t".into(),
            config: Some(TopicConfig { partitions: 1, ..Default::default() }),
        })
        .await?;
    let listed = |token| {
        let ch = with(&router_ch, token);
        async move {
            let topics =
                EventsClient::new(ch).list_topics(ListTopicsRequest {}).await?.into_inner();
            Ok::<_, anyhow::Error>(topics.topics.into_iter().map(|t| t.name).collect::<Vec<_>>())
        }
    };
    ensure!(listed(READER).await? == ["orders.t"], "the reader sees its topic");
    ensure!(listed(NOBODY).await?.is_empty(), "a caller without grants sees no topics");

    // The nodes check for themselves: the same table straight to a node.
    run_table(&c, &c.addr(1), &router_ch, node_rpcs(), false).await.context("node 1")?;
    let refused = c.metrics(1).await?;
    ensure!(
        refused
            .lines()
            .any(|l| l.starts_with("ringkv_auth_refused_total{reason=\"permission_denied\"} ")
                && !l.ends_with(" 0")),
        "refusals are counted on /metrics"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_identify_callers_and_only_routers_may_name_others() -> Result<()> {
    let c = Cluster::start_with_policy(3, 2, 3, Tuning::default(), &policy(true)).await?;
    c.wait_for_leaders(T).await?;
    let router = c.start_router("round-robin").await?;
    let tls = c.tls.as_ref().context("TLS")?;
    // An application certificate (of the clients' CA) whose subject the policy lists.
    let dir = c.dir.path().join("tls").join("orders-app");
    let paths = tls.ca.write_identity(&dir, &["orders-app"], Usage::Client)?;
    std::fs::copy(tls.identity("client", "127.0.0.1")?.join(TlsPaths::CA_FILE), &paths.ca)?;
    let app = Dialer::new(Some(Tls::load(paths)?));
    let dial = |addr: String| {
        let app = app.clone();
        async move {
            Ok::<_, anyhow::Error>(AuthChannel::plain(app.connect(&app.endpoint(&addr)?).await?))
        }
    };
    let ops = with(&anonymous(&c, &router.addr).await?, OPS);
    KvClient::new(ops)
        .put(PutRequest { key: bytes("orders/1"), value: bytes("v"), ..Default::default() })
        .await?;

    for (what, addr) in [("router", router.addr.clone()), ("node", c.addr(1))] {
        let mut kv = KvClient::new(dial(addr).await?);
        let get = GetRequest { key: bytes("orders/1"), consistency: Consistency::Stale as i32 };
        let got = kv.get(get).await.with_context(|| format!("{what}: a read its role grants"))?;
        ensure!(got.into_inner().kv.is_some(), "{what}: the value");
        let put = PutRequest { key: bytes("orders/1"), value: bytes("x"), ..Default::default() };
        refusal(what, "orders-app", kv.put(put).await.map(|_| ()), Code::PermissionDenied)?;
    }

    // The application names the operator in the header only routers may use: refused.
    let mut req = tonic::Request::new(NodeStatusRequest {});
    req.metadata_mut().insert(CALLER_SUBJECT_HEADER, "127.0.0.1".parse()?);
    let r = AdminClient::new(dial(c.addr(1)).await?).node_status(req).await.map(|_| ());
    refusal("NodeStatus", "orders-app naming the operator", r, Code::Unauthenticated)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_in_the_policy_file_is_refused_without_a_restart() -> Result<()> {
    let c = Cluster::start_with_policy(3, 2, 3, Tuning::default(), &policy(true)).await?;
    c.wait_for_leaders(T).await?;
    let router = c.start_router("round-robin").await?;
    let ch = anonymous(&c, &router.addr).await?;
    // Stale: any replica answers, so a node that does not lead the shard answers too.
    let get = || GetRequest { key: bytes("orders/1"), consistency: Consistency::Stale as i32 };
    KvClient::new(with(&ch, READER)).get(get()).await.context("the reader may read")?;
    let path = c.auth_policy.clone().context("a policy")?;
    // Replaced as cert-manager or a Secret update would: a new file renamed into place.
    std::fs::write(path.with_extension("new"), policy(false))?;
    std::fs::rename(path.with_extension("new"), &path)?;
    for addr in [router.addr.clone(), c.addr(1)] {
        let ch = anonymous(&c, &addr).await?;
        wait_for(T, "the revoked token to be refused", || {
            let ch = ch.clone();
            async move {
                let r = KvClient::new(with(&ch, READER)).get(get()).await;
                r.err().filter(|e| e.code() == Code::Unauthenticated).map(|_| ())
            }
        })
        .await?;
        KvClient::new(with(&ch, WRITER)).get(get()).await.context("other tokens keep working")?;
    }
    Ok(())
}
