//! Node configuration: embedded defaults, an optional TOML file, then flags
//! (a flag beats the file, the file beats the default).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dynkv_engine::SyncMode;
use serde::Deserialize;

/// Everything `dynkv serve` needs. Field names are the TOML keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// Address every listener binds.
    pub(crate) listen: IpAddr,
    /// Native protocol: shard N listens on `base_port + N`.
    pub(crate) base_port: u16,
    /// Internode traffic: shard N on `internode_base_port + N` (used by
    /// replication; reserved now).
    pub(crate) internode_base_port: u16,
    pub(crate) resp_port: u16,
    pub(crate) metrics_port: u16,
    pub(crate) data_dir: PathBuf,
    /// Shards (executors, one per core). 0 means one per available core.
    pub(crate) shards: usize,
    /// `always`, `never` or `interval_ms=N`.
    pub(crate) sync: String,
    pub(crate) cache_mib: u64,
    pub(crate) key_max_bytes: usize,
    pub(crate) value_max_bytes: usize,
    /// Requests in flight per connection before the server stops reading.
    pub(crate) inflight_per_connection_max: usize,
    /// Open connections per shard; more are accepted and closed at once.
    pub(crate) connections_per_shard_max: usize,
    /// This node's permanent id; 0 means the one stored in the data
    /// directory (created at random on first start).
    pub(crate) node_id: u64,
    /// Internode addresses (`host:port` of shard 0) of the other nodes.
    /// Every node of a cluster lists the others; membership is exchanged
    /// with them at start and kept in the data directory.
    pub(crate) peers: Vec<String>,
    /// Internode addresses of members of a running cluster to join. The
    /// node waits for the cluster's ownership table, and the cluster then
    /// moves this node's share of partitions to it.
    pub(crate) join: Vec<String>,
    /// The internode address (`ip:port` of shard 0; shard N at port + N)
    /// other nodes dial, when it is not `listen:internode_base_port`
    /// (behind NAT, a proxy, or a container's port mapping).
    pub(crate) advertise: Option<String>,
    /// Capacity weight: this node's share of partitions is proportional to
    /// it. 0 means the shard count.
    pub(crate) weight: u32,
    /// Failure zone (rack, room): replicas go to distinct zones when there
    /// are enough.
    pub(crate) zone: u32,
    /// Shared secret that internode connections prove they know (HMAC over
    /// fresh nonces). Required when `peers` is set; the environment variable
    /// `DYNKV_CLUSTER_SECRET` may supply it instead.
    pub(crate) cluster_secret: String,
    /// Replicas per key (N), and the default read and write quorums.
    pub(crate) n: usize,
    pub(crate) r: usize,
    pub(crate) w: usize,
    /// How long one replica may take before a fallback replaces it.
    pub(crate) replica_timeout_ms: u64,
    /// How long a request waits for its quorum unless the client says.
    pub(crate) request_timeout_ms: u64,
    /// Most siblings a write may leave.
    pub(crate) siblings_max: usize,
    /// Hints one shard keeps for unreachable replicas; past it new hints are
    /// refused (and counted).
    pub(crate) hints_max_mib: u64,
    /// Hints older than this are dropped (and counted); anti-entropy
    /// repairs what they carried.
    pub(crate) hint_age_max_ms: u64,
    /// A delete's tombstone is removed once every replica holds it (checked
    /// by anti-entropy) and it is older than this. It must exceed
    /// `hint_age_max_ms`, so that no hint older than the delete can still
    /// be delivered after the tombstone is gone.
    pub(crate) tombstone_reap_after_ms: u64,
    /// The largest difference between two nodes' clocks (NTP keeps it far
    /// lower); `tombstone_reap_after_ms` must exceed `hint_age_max_ms` by
    /// at least this.
    pub(crate) clock_skew_max_ms: u64,
    /// Pause between handoff passes, and hints delivered per second at most.
    pub(crate) handoff_interval_ms: u64,
    pub(crate) handoff_per_second_max: u64,
    /// Anti-entropy compares one owned partition with its other replicas
    /// every this many ms, repairing at most this many keys per second.
    pub(crate) anti_entropy_partition_pause_ms: u64,
    pub(crate) anti_entropy_keys_per_second_max: u64,
    /// Pause between gossip rounds, and members contacted per round (at
    /// random).
    pub(crate) gossip_interval_ms: u64,
    pub(crate) gossip_fanout: usize,
    /// Keys per second at most that a shard copies into a partition it is
    /// receiving (join, leave, remove).
    pub(crate) transfer_keys_per_second_max: u64,
    /// How long ownership must be settled before a node drops its copies
    /// of partitions it no longer owns: time for every node to hear of the
    /// change, so none still reads from the old copy.
    pub(crate) ownership_drop_delay_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: IpAddr::from([127, 0, 0, 1]),
            base_port: 7600,
            internode_base_port: 7700,
            resp_port: 7379,
            metrics_port: 7380,
            data_dir: PathBuf::from("./dynkv-data"),
            shards: 0,
            sync: "always".into(),
            cache_mib: 64,
            key_max_bytes: 1024,
            value_max_bytes: 1 << 20,
            inflight_per_connection_max: 1024,
            connections_per_shard_max: 10_000,
            node_id: 0,
            peers: Vec::new(),
            join: Vec::new(),
            advertise: None,
            weight: 0,
            zone: 0,
            cluster_secret: String::new(),
            n: 3,
            r: 2,
            w: 2,
            replica_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            siblings_max: 32,
            hints_max_mib: 1024,
            hint_age_max_ms: 3 * 3600 * 1000,
            tombstone_reap_after_ms: 4 * 3600 * 1000,
            clock_skew_max_ms: 60 * 1000,
            handoff_interval_ms: 1_000,
            handoff_per_second_max: 5_000,
            anti_entropy_partition_pause_ms: 100,
            anti_entropy_keys_per_second_max: 1_000,
            gossip_interval_ms: 1_000,
            gossip_fanout: 3,
            transfer_keys_per_second_max: 20_000,
            ownership_drop_delay_ms: 10_000,
        }
    }
}

/// Command-line overrides for [`ServeConfig`].
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct ServeArgs {
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    listen: Option<IpAddr>,
    /// Native protocol port of shard 0; shard N uses base+N [default: 7600].
    #[arg(long)]
    base_port: Option<u16>,
    /// Internode port of shard 0 [default: 7700].
    #[arg(long)]
    internode_base_port: Option<u16>,
    /// Redis protocol (RESP) port, served by every shard [default: 7379].
    #[arg(long)]
    resp_port: Option<u16>,
    /// Prometheus metrics port [default: 7380].
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Data directory [default: ./dynkv-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shards, one executor per core [default: every core].
    #[arg(long)]
    shards: Option<usize>,
    /// Durability: always | never | interval_ms=N [default: always].
    #[arg(long)]
    sync: Option<String>,
    /// Read cache per shard, MiB [default: 64].
    #[arg(long)]
    cache_mib: Option<u64>,
    /// Largest key in bytes [default: 1024].
    #[arg(long)]
    key_max_bytes: Option<usize>,
    /// Largest value in bytes [default: 1048576].
    #[arg(long)]
    value_max_bytes: Option<usize>,
    /// This node's id [default: stored in the data directory].
    #[arg(long)]
    node_id: Option<u64>,
    /// Other nodes' internode addresses, comma-separated (host:port).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Join a running cluster through these members' internode addresses,
    /// comma-separated (host:port).
    #[arg(long, value_delimiter = ',')]
    join: Option<Vec<String>>,
    /// Internode address other nodes dial (host:port of shard 0)
    /// [default: listen:internode-base-port].
    #[arg(long)]
    advertise: Option<String>,
    /// Capacity weight (share of partitions) [default: the shard count].
    #[arg(long)]
    weight: Option<u32>,
    /// Cluster secret for internode authentication [env: DYNKV_CLUSTER_SECRET].
    #[arg(long)]
    cluster_secret: Option<String>,
    /// Replicas per key [default: 3].
    #[arg(long)]
    n: Option<usize>,
    /// Default read quorum [default: 2].
    #[arg(long)]
    r: Option<usize>,
    /// Default write quorum [default: 2].
    #[arg(long)]
    w: Option<usize>,
}

impl ServeArgs {
    /// Resolves defaults, the file, and flags into a checked configuration.
    pub(crate) fn resolve(&self) -> Result<ServeConfig, String> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => ServeConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { config.$field = v.clone(); })* };
        }
        set!(
            listen,
            base_port,
            internode_base_port,
            resp_port,
            metrics_port,
            data_dir,
            shards,
            sync,
            cache_mib,
            key_max_bytes,
            value_max_bytes,
            node_id,
            peers,
            join,
            weight,
            cluster_secret,
            n,
            r,
            w
        );
        if let Some(advertise) = &self.advertise {
            config.advertise = Some(advertise.clone());
        }
        if config.cluster_secret.is_empty() {
            config.cluster_secret = std::env::var("DYNKV_CLUSTER_SECRET").unwrap_or_default();
        }
        if config.shards == 0 {
            config.shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        config.check()?;
        Ok(config)
    }
}

fn load_file(path: &Path) -> Result<ServeConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

impl ServeConfig {
    fn check(&self) -> Result<(), String> {
        if self.shards > 256 {
            return Err(format!("shards = {} is more than 256", self.shards));
        }
        let last = u32::from(self.base_port) + self.shards as u32 - 1;
        if last > u32::from(u16::MAX)
            || u32::from(self.internode_base_port) + self.shards as u32 - 1 > u32::from(u16::MAX)
        {
            return Err(format!("base ports + {} shards run past port 65535", self.shards));
        }
        SyncMode::parse(&self.sync).map_err(|e| e.to_string())?;
        if self.inflight_per_connection_max == 0 || self.connections_per_shard_max == 0 {
            return Err("inflight_per_connection_max and connections_per_shard_max must be positive".into());
        }
        if !(1..=dynkv_ring::REPLICAS_MAX).contains(&self.n) {
            return Err(format!(
                "n = {} must be between 1 and {}",
                self.n,
                dynkv_ring::REPLICAS_MAX
            ));
        }
        if self.r == 0 || self.w == 0 || self.r > self.n || self.w > self.n {
            return Err(format!(
                "r = {} and w = {} must be between 1 and n = {}",
                self.r, self.w, self.n
            ));
        }
        if (!self.peers.is_empty() || !self.join.is_empty()) && self.cluster_secret.len() < 16 {
            return Err(
                "a cluster (peers or join set) needs cluster_secret (or DYNKV_CLUSTER_SECRET) of at least 16 bytes, \
                        the same on every node"
                    .into(),
            );
        }
        if self.replica_timeout_ms == 0 || self.request_timeout_ms == 0 || self.siblings_max == 0 {
            return Err("replica_timeout_ms, request_timeout_ms and siblings_max must be positive".into());
        }
        if self.anti_entropy_partition_pause_ms == 0
            || self.anti_entropy_keys_per_second_max == 0
            || self.handoff_interval_ms == 0
            || self.handoff_per_second_max == 0
            || self.gossip_interval_ms == 0
            || self.gossip_fanout == 0
            || self.transfer_keys_per_second_max == 0
        {
            return Err(
                "the handoff, anti-entropy and gossip intervals and rates, and gossip_fanout, must be positive".into(),
            );
        }
        if let Some(advertise) = &self.advertise {
            let addr = advertise
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("advertise = {advertise:?} is not an ip:port address: {e}"))?;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(format!(
                    "advertise = {advertise:?} must name a reachable address and port"
                ));
            }
        }
        // The margin absorbs clock skew between the node that stamped a
        // delete and the fallback that ages a hint.
        if self.tombstone_reap_after_ms <= self.hint_age_max_ms.saturating_add(self.clock_skew_max_ms) {
            return Err(format!(
                "tombstone_reap_after_ms = {} must exceed hint_age_max_ms = {} plus clock_skew_max_ms = {}: a \
                 hint older than a reaped tombstone could bring its key back",
                self.tombstone_reap_after_ms, self.hint_age_max_ms, self.clock_skew_max_ms
            ));
        }
        if self.weight > dynkv_ring::WEIGHT_MAX {
            return Err(format!("weight = {} exceeds {}", self.weight, dynkv_ring::WEIGHT_MAX));
        }
        self.engine_config(0).validate().map_err(|e| e.to_string())
    }

    /// The internode address of shard 0 that other nodes dial.
    pub(crate) fn advertised_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| std::net::SocketAddr::new(self.listen, self.internode_base_port).to_string())
    }

    /// The capacity weight this node announces.
    pub(crate) fn capacity_weight(&self) -> u32 {
        if self.weight == 0 {
            self.shards as u32
        } else {
            self.weight
        }
    }

    /// The engine configuration of shard `shard`.
    pub(crate) fn engine_config(&self, shard: usize) -> dynkv_engine::EngineConfig {
        let mut engine = dynkv_engine::EngineConfig::new(self.data_dir.join(format!("shard-{shard}")));
        engine.sync = SyncMode::parse(&self.sync).unwrap_or(SyncMode::Always);
        engine.cache_capacity_bytes = self.cache_mib << 20;
        engine.key_len_max_bytes = self.key_max_bytes;
        engine.value_len_max_bytes = self.object_max_bytes();
        engine
    }

    /// True under `sync=always`: every acknowledged write is durable.
    pub(crate) fn sync_always(&self) -> bool {
        matches!(SyncMode::parse(&self.sync), Ok(SyncMode::Always))
    }

    /// Largest stored object: a value with its version, or several
    /// siblings. Writes that would pass it fail with "value too large".
    pub(crate) fn object_max_bytes(&self) -> usize {
        self.value_max_bytes
            .saturating_mul(4)
            .saturating_add(64 << 10)
            .min(dynkv_engine::VALUE_LEN_CEILING_BYTES)
    }

    /// The engine configuration of shard `shard`'s hint store.
    pub(crate) fn hint_engine_config(&self, shard: usize) -> dynkv_engine::EngineConfig {
        let mut engine = self.engine_config(shard);
        engine.dir = self.data_dir.join(format!("hints-{shard}"));
        engine.cache_capacity_bytes = 1 << 20;
        engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dynkv.toml");
        std::fs::write(&file, "base_port = 9000\nsync = \"never\"\nshards = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            sync: Some("interval_ms=5".into()),
            ..ServeArgs::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!(
            (config.base_port, config.sync.as_str(), config.resp_port),
            (9000, "interval_ms=5", 7379)
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "bse_port = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("bse_port"), "{err}");
        let err = ServeArgs {
            sync: Some("sometimes".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("sometimes"), "{err}");
        let err = ServeArgs {
            base_port: Some(65535),
            shards: Some(4),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("65535"), "{err}");
        let file = dir.path().join("reap.toml");
        std::fs::write(
            &file,
            "hint_age_max_ms = 5000
tombstone_reap_after_ms = 5000
",
        )
        .unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("tombstone_reap_after_ms"), "{err}");
    }
}
