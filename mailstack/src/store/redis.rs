//! [`RedisStore`]: the store several filter nodes share, on a Redis server (Debian
//! `redis-server`, the one rspamd users run already).
//!
//! Keys, all under the prefix `mailstack:`: a stream is a sorted set `mailstack:s:NAME`
//! whose members are `TTTTTTTTTTTTTTTTTTTT:ID` (the time in milliseconds, 20 digits, so the
//! lexicographic order is (time, id) order and ranges are `ZRANGEBYLEX`), beside a hash
//! `mailstack:d:NAME` (id → bytes) that makes the append idempotent (`HSETNX`). Every
//! operation that touches both is one Lua script, so it is atomic on the server. Key-value
//! entries are `mailstack:k:KEY` (`SET PX`), counters `mailstack:c:KEY` (`INCRBY`, `PEXPIRE`
//! when new), leases `mailstack:l:NAME` (`SET NX PX`, renewed and released only by their
//! holder).
//!
//! One multiplexed connection, opened on first use and again after an error, with connect
//! and response timeouts ([`CONNECT_TIMEOUT`], [`RESPONSE_TIMEOUT`]), so a dead server makes
//! an operation fail quickly instead of hanging.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use tokio::sync::Mutex;

use super::{
    MAX_VALUE_LEN, Record, Scan, Store, StoreError, Trim, check_name, check_records, ttl_ms,
};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const PREFIX: &str = "mailstack:";

/// The Redis store (see the module docs).
#[derive(Debug)]
pub struct RedisStore {
    client: Client,
    conn: Mutex<Option<MultiplexedConnection>>,
}

fn err(e: redis::RedisError) -> StoreError {
    // A server still loading its data after a restart is down for our purpose: retry later.
    let busy = matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
    );
    if busy
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::Backend(Box::new(e))
    }
}

fn member(time_ms: u64, id: &str) -> String {
    format!("{time_ms:020}:{id}")
}

const APPEND: &str = r"
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('ZADD', KEYS[1], 0, ARGV[i + 1])
    n = n + 1
  end
end
local max = tonumber(redis.call('GET', KEYS[3]) or '0')
if max > 0 then
  local over = redis.call('ZCARD', KEYS[1]) - max
  if over > 0 then
    for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, over - 1)) do
      redis.call('HDEL', KEYS[2], string.sub(m, 22))
    end
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  end
end
return n
";

const SCAN: &str = r"
local ms = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(ms) do
  local d = redis.call('HGET', KEYS[2], string.sub(m, 22))
  if d then
    table.insert(out, m)
    table.insert(out, d)
  end
end
return out
";

const TRIM: &str = r"
local removed = 0
if ARGV[1] ~= '' then
  local old = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1])
  for _, m in ipairs(old) do
    redis.call('HDEL', KEYS[2], string.sub(m, 22))
  end
  removed = removed + redis.call('ZREMRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[1])
end
if ARGV[2] ~= '' then
  local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
  if over > 0 then
    for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, over - 1)) do
      redis.call('HDEL', KEYS[2], string.sub(m, 22))
    end
    removed = removed + redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  end
end
return removed
";

const INCR: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
";

const ACQUIRE: &str = r"
local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

impl RedisStore {
    /// A store on the server at `url` (`redis://HOST:PORT/DB`, `redis+unix:///PATH`); only the
    /// URL is checked here, the connection is made on first use.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(err)?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
        })
    }

    /// The maximum length of `stream` that every append enforces (0: none), kept on the
    /// server so every node applies the same.
    pub async fn set_max_len(&self, stream: &str, max_len: u64) -> Result<(), StoreError> {
        check_name(stream)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{PREFIX}m:{stream}")).arg(max_len);
        self.query::<(), _, _>(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(err)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the connection; after an error the next call reconnects.
    async fn query<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let c = self.connection().await?;
        match f(c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Whatever went wrong, the next call starts on a fresh connection: a
                // restarted server or a half-closed socket must not keep failing every call.
                *self.conn.lock().await = None;
                Err(err(e))
            }
        }
    }

    fn stream_keys(stream: &str) -> [String; 3] {
        [
            format!("{PREFIX}s:{stream}"),
            format!("{PREFIX}d:{stream}"),
            format!("{PREFIX}m:{stream}"),
        ]
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn append(&self, stream: &str, records: &[Record]) -> Result<usize, StoreError> {
        check_name(stream)?;
        check_records(records)?;
        if records.is_empty() {
            return Ok(0);
        }
        let script = Script::new(APPEND);
        let mut inv = script.prepare_invoke();
        for k in Self::stream_keys(stream) {
            inv.key(k);
        }
        for r in records {
            inv.arg(&r.id).arg(member(r.time_ms, &r.id)).arg(&r.data);
        }
        let n: usize = self
            .query(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n)
    }

    async fn scan(&self, stream: &str, scan: &Scan) -> Result<Vec<Record>, StoreError> {
        check_name(stream)?;
        if scan.from_ms >= scan.to_ms {
            return Ok(Vec::new());
        }
        let min = match &scan.after {
            Some((t, id)) if *t >= scan.from_ms => format!("({}", member(*t, id)),
            _ => format!("[{:020}:", scan.from_ms),
        };
        let max = format!("({:020}:", scan.to_ms);
        let script = Script::new(SCAN);
        let [z, d, _] = Self::stream_keys(stream);
        let mut inv = script.prepare_invoke();
        inv.key(z)
            .key(d)
            .arg(min)
            .arg(max)
            .arg(scan.effective_limit());
        let flat: Vec<Vec<u8>> = self
            .query(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let m = std::str::from_utf8(&pair[0])
                .map_err(|_| StoreError::Corrupt("stream member is not UTF-8".into()))?;
            let (t, id) = m
                .split_at_checked(20)
                .and_then(|(t, rest)| Some((t.parse::<u64>().ok()?, rest.strip_prefix(':')?)))
                .ok_or_else(|| StoreError::Corrupt(format!("stream member {m:?}")))?;
            out.push(Record {
                id: id.to_owned(),
                time_ms: t,
                data: pair[1].clone(),
            });
        }
        Ok(out)
    }

    async fn len(&self, stream: &str) -> Result<u64, StoreError> {
        check_name(stream)?;
        let mut cmd = redis::cmd("ZCARD");
        cmd.arg(format!("{PREFIX}s:{stream}"));
        self.query(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    async fn trim(&self, stream: &str, trim: Trim) -> Result<u64, StoreError> {
        check_name(stream)?;
        let script = Script::new(TRIM);
        let [z, d, _] = Self::stream_keys(stream);
        let mut inv = script.prepare_invoke();
        inv.key(z)
            .key(d)
            .arg(
                trim.before_ms
                    .map_or(String::new(), |b| format!("{b:020}:")),
            )
            .arg(trim.max_len.map_or(String::new(), |m| m.to_string()));
        self.query(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    async fn kv_set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        check_name(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(StoreError::TooLarge("value over MAX_VALUE_LEN"));
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{PREFIX}k:{key}"))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl));
        self.query::<(), _, _>(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_name(key)?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{PREFIX}k:{key}"));
        self.query(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, StoreError> {
        check_name(key)?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{PREFIX}k:{key}"));
        let n: u64 = self
            .query(|mut c| async move { cmd.query_async(&mut c).await })
            .await?;
        Ok(n > 0)
    }

    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64, StoreError> {
        check_name(key)?;
        let script = Script::new(INCR);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{PREFIX}c:{key}")).arg(by).arg(ttl_ms(ttl));
        self.query(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.lease(ACQUIRE, name, holder, Some(ttl)).await
    }

    async fn renew(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.lease(RENEW, name, holder, Some(ttl)).await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        self.lease(RELEASE, name, holder, None).await
    }
}

impl RedisStore {
    async fn lease(
        &self,
        lua: &str,
        name: &str,
        holder: &str,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        check_name(name)?;
        check_name(holder)?;
        let script = Script::new(lua);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{PREFIX}l:{name}"))
            .arg(holder)
            .arg(ttl.map_or(0, ttl_ms));
        let n: i64 = self
            .query(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_as_time_then_id() {
        let mut ms = [
            member(10, "b"),
            member(9, "z"),
            member(10, "a"),
            member(100, "a"),
        ];
        ms.sort();
        assert_eq!(
            ms,
            [
                member(9, "z"),
                member(10, "a"),
                member(10, "b"),
                member(100, "a")
            ]
        );
        assert_eq!(
            &member(5, "abc")[21..],
            "abc",
            "the Lua scripts take the id at 22"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(RedisStore::open("http://x").is_err());
        assert!(RedisStore::open("redis://127.0.0.1:1/0").is_ok());
    }
}
