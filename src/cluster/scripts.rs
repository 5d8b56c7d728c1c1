//! The Lua scripts: each cluster change is one script, so it is one atomic round trip that
//! writes the state, bumps the mesh sequence and publishes the change together.
//!
//! Every script starts with the same prelude (key prefix, Redis `TIME` in milliseconds,
//! lease check, sequence bump, publish, state removal). Replies are flat arrays of strings
//! whose first element says what happened (`ok`, `lease-lost`, `not-owner`, …). Times come
//! from Redis `TIME`, never from a hub's clock. `redis::Script` loads a script again by
//! itself when Redis answers NOSCRIPT (after a restart).

use std::sync::LazyLock;

use redis::Script;

/// Shared Lua helpers, prepended to every script.
macro_rules! prelude {
    () => {
        r#"
local P = 'p2ppi:'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Is `hub`'s lease unexpired (and, when `token` is given, held by that registration)?
local function lease_live(hub, token)
  local l = redis.call('HMGET', P .. 'lease:' .. hub, 'token', 'expires')
  if not l[2] then return false end
  if token and l[1] ~= token then return false end
  return tonumber(l[2]) > now_ms()
end
-- The mesh's epoch, created from TIME when the mesh's state is first created.
local function epoch_of(mesh)
  local k = P .. 'mesh:' .. mesh
  local epoch = redis.call('HGET', k, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. '.' .. t[2]
    redis.call('HSET', k, 'epoch', epoch, 'seq', 0)
    redis.call('SADD', P .. 'meshes', mesh)
  end
  return epoch
end
-- Bumps the mesh sequence and publishes one change with its tag (the writer's HMAC of
-- the state, or of the departure); returns the new sequence number.
local function publish(mesh, hub, peer, objects_json, tag)
  local epoch = epoch_of(mesh)
  local seq = redis.call('HINCRBY', P .. 'mesh:' .. mesh, 'seq', 1)
  redis.call('PUBLISH', P .. 'chan:mesh:' .. mesh,
    '{"hub":' .. cjson.encode(hub) .. ',"epoch":' .. cjson.encode(epoch) ..
    ',"seq":' .. seq .. ',"peer":' .. cjson.encode(peer) .. ',"objects":' .. objects_json ..
    ',"tag":' .. cjson.encode(tag or '') .. '}')
  return seq
end
-- Removes a peer's relayed state and membership and publishes its departure (as `by`),
-- tagged with the departure tag its writer stored with it (Redis cannot compute one).
local function remove_state(peer, by)
  local pk = P .. 'peer:' .. peer
  local st = redis.call('HMGET', pk, 'mesh', 'gone')
  local mesh = st[1]
  if not mesh then return false end
  redis.call('DEL', pk)
  redis.call('ZREM', P .. 'members:' .. mesh, peer)
  return publish(mesh, by, peer, 'null', st[2])
end
-- Writes a peer's relayed state as `hub` (moving it if its mesh changed) with its state
-- tag and departure tag, and publishes it; false if nothing changed.
local function write_state(peer, mesh, hub, objects, tag, gone)
  local pk = P .. 'peer:' .. peer
  local st = redis.call('HMGET', pk, 'mesh', 'objects', 'hub', 'tag')
  if st[1] and st[1] ~= mesh then
    remove_state(peer, hub)
  elseif st[1] == mesh and st[2] == objects and st[3] == hub and st[4] == tag then
    return false
  end
  redis.call('HSET', pk, 'mesh', mesh, 'hub', hub, 'objects', objects, 'tag', tag, 'gone', gone)
  local seq = publish(mesh, hub, peer, objects, tag)
  redis.call('ZADD', P .. 'members:' .. mesh, 'NX', seq, peer)
  return seq
end
"#
    };
}

/// ARGV: hub, token, lease ms. Takes (or retakes) the hub's lease with a new token; returns
/// the peers still routed to this node name (peer, mesh, peer, mesh, …) so the caller can
/// remove those it no longer holds.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, token, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
redis.call('HSET', P .. 'lease:' .. hub, 'token', token, 'expires', now + lease, 'since', now)
redis.call('ZADD', P .. 'hubs', now + lease, hub)
return redis.call('HGETALL', P .. 'owned:' .. hub)
"#
    ))
});

/// ARGV: hub, token, lease ms. Renews the lease if this registration still holds it and it
/// has not expired: `{ok, expires}`; else `{lost, gone|taken|expired}`.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, token, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local l = redis.call('HMGET', P .. 'lease:' .. hub, 'token', 'expires')
if not l[2] then return {'lost', 'gone'} end
if l[1] ~= token then return {'lost', 'taken'} end
local now = now_ms()
if tonumber(l[2]) <= now then return {'lost', 'expired'} end
redis.call('HSET', P .. 'lease:' .. hub, 'expires', now + lease)
redis.call('ZADD', P .. 'hubs', now + lease, hub)
return {'ok', tostring(now + lease)}
"#
    ))
});

/// ARGV: this hub. `{ms until the next other hub's lease expires (or ''), expired hub, …}`
/// by Redis `TIME`, so the reaper can wake exactly when a lease ends.
pub(crate) static EXPIRED_HUBS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
local out = {''}
for _, hub in ipairs(redis.call('ZRANGEBYSCORE', P .. 'hubs', '-inf', now)) do
  out[#out + 1] = hub
end
local next = redis.call('ZRANGEBYSCORE', P .. 'hubs', '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
for i = 1, #next, 2 do
  if next[i] ~= ARGV[1] then
    out[1] = tostring(tonumber(next[i + 1]) - now)
    break
  end
end
return out
"#
    ))
});

/// No ARGV. Every registered hub with its lease expiry and the milliseconds left, by Redis
/// `TIME`, and the peers routed to it: `{hub, expires, left, since, peers, …}`.
pub(crate) static HUBS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
local out = {}
local hubs = redis.call('ZRANGE', P .. 'hubs', 0, -1, 'WITHSCORES')
for i = 1, #hubs, 2 do
  out[#out + 1] = hubs[i]
  out[#out + 1] = hubs[i + 1]
  out[#out + 1] = tostring(tonumber(hubs[i + 1]) - now)
  out[#out + 1] = redis.call('HGET', P .. 'lease:' .. hubs[i], 'since') or ''
  out[#out + 1] = tostring(redis.call('HLEN', P .. 'owned:' .. hubs[i]))
end
return out
"#
    ))
});

/// ARGV: hub, token, peer, mesh, supersede notice (sealed), state tag, departure tag, and
/// the objects JSON of a re-claim ('' for a new session, whose state is empty and tagged
/// so). A re-claim (this hub still holds the peer, but its route is gone: Redis lost its
/// state) writes the peer's state in the same script, so no hub sees it empty meanwhile.
/// A new session of `peer` on `hub`:
/// routes the PeerName here, tells the previous owner hub through its inbox, and makes the
/// peer a member of `mesh`. Its previous state is either removed (published as gone) and
/// replaced by a membership with no objects yet (published), or, when a drain left it
/// *moving* in the same mesh (DESIGN 8, Hand-off), kept as it is and published once as
/// this hub's: a hub whose replica holds the same objects sees no change.
/// `{ok, previous-hub or '', 'handoff' or ''}`, or `{lease-lost}`.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, token, peer, mesh, notice = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tag, gone, reclaim = ARGV[6], ARGV[7], ARGV[8]
if not lease_live(hub, token) then return {'lease-lost'} end
local prev = redis.call('HGET', P .. 'routes', peer)
if prev and prev ~= hub then
  redis.call('HDEL', P .. 'owned:' .. prev, peer)
  redis.call('PUBLISH', P .. 'chan:inbox:' .. prev, notice)
end
local pk = P .. 'peer:' .. peer
local st = redis.call('HMGET', pk, 'mesh', 'objects', 'moving', 'tag')
local objects, how = '[]', ''
if reclaim ~= '' then
  objects, how = reclaim, 'reclaim'
elseif st[3] and st[1] == mesh and st[2] then
  -- The moving state keeps its writer's tag: same peer, mesh and objects.
  objects, tag, how = st[2], st[4] or '', 'handoff'
  redis.call('HDEL', pk, 'moving')
else
  remove_state(peer, hub)
end
redis.call('HSET', P .. 'routes', peer, hub)
redis.call('HSET', P .. 'owned:' .. hub, peer, mesh)
write_state(peer, mesh, hub, objects, tag, gone)
return {'ok', prev or '', how}
"#
    ))
});

/// ARGV: hub, peer. A drain of `hub` closed the peer's session (DESIGN 8, Hand-off): its
/// state is marked *moving*, changing nothing anyone sees (nothing is published), so that
/// a claim of the peer on another hub keeps it. `{ok}`, `{not-owner}` (another hub holds
/// the peer now) or `{absent}`.
pub(crate) static MOVING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, peer = ARGV[1], ARGV[2]
if redis.call('HGET', P .. 'routes', peer) ~= hub then return {'not-owner'} end
local pk = P .. 'peer:' .. peer
if redis.call('EXISTS', pk) == 0 then return {'absent'} end
redis.call('HSET', pk, 'moving', '1')
return {'ok'}
"#
    ))
});

/// ARGV: hub, token, peer, mesh, objects JSON, state tag, departure tag. A peer's relayed state changed (or is
/// re-asserted): write it, bump the mesh sequence, publish it. `{ok, seq}`, `{unchanged}`,
/// `{not-owner, hub}`, `{unrouted}` or `{lease-lost}`. Only a claim creates a route: a
/// missing one (the peer departed, was reaped, or Redis lost its state) is `{unrouted}`,
/// and the store claims the peer again only if it still holds it, so a late write can
/// never bring a departed peer back.
pub(crate) static SET_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, token, peer, mesh, objects = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tag, gone = ARGV[6], ARGV[7]
if not lease_live(hub, token) then return {'lease-lost'} end
local route = redis.call('HGET', P .. 'routes', peer)
if not route then return {'unrouted'} end
if route ~= hub then return {'not-owner', route} end
redis.call('HSET', P .. 'owned:' .. hub, peer, mesh)
local seq = write_state(peer, mesh, hub, objects, tag, gone)
if not seq then return {'unchanged'} end
return {'ok', tostring(seq)}
"#
    ))
});

/// ARGV: hub, peer. The peer's session on `hub` ended: unroute it and publish its
/// departure, unless another hub owns it now. `{ok}` or `{not-owner, hub-or-''}`.
pub(crate) static GONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, peer = ARGV[1], ARGV[2]
local route = redis.call('HGET', P .. 'routes', peer)
if route ~= hub then return {'not-owner', route or ''} end
redis.call('HDEL', P .. 'routes', peer)
redis.call('HDEL', P .. 'owned:' .. hub, peer)
remove_state(peer, hub)
return {'ok'}
"#
    ))
});

/// ARGV: mesh. A consistent snapshot: `{epoch, seq, peer, hub, objects, tag, …}` in join
/// order.
pub(crate) static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local mesh = ARGV[1]
local out = {epoch_of(mesh), redis.call('HGET', P .. 'mesh:' .. mesh, 'seq') or '0'}
for _, peer in ipairs(redis.call('ZRANGE', P .. 'members:' .. mesh, 0, -1)) do
  local st = redis.call('HMGET', P .. 'peer:' .. peer, 'hub', 'objects', 'tag')
  if st[1] then
    out[#out + 1] = peer
    out[#out + 1] = st[1]
    out[#out + 1] = st[2] or ''
    out[#out + 1] = st[3] or ''
  end
end
return out
"#
    ))
});

/// ARGV: dead hub, mesh, this hub, mode (`expired` | `own`), this hub's token, peers…
/// Removes the listed peers of `dead` in `mesh` (each re-checked: still routed there, still
/// in that mesh) and publishes their departure. Mode `expired` re-checks that `dead`'s
/// lease has expired (`{alive}` otherwise) and forgets the hub once it owns nothing; mode
/// `own` purges this hub's own stale peers after it re-registered (`{lease-lost}` if the
/// token is no longer current). `{ok, removed}`.
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local dead, mesh, me, mode, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if mode == 'expired' then
  if lease_live(dead, nil) then return {'alive'} end
elseif not lease_live(dead, token) then
  return {'lease-lost'}
end
local removed = 0
for i = 6, #ARGV do
  local peer = ARGV[i]
  if redis.call('HGET', P .. 'owned:' .. dead, peer) == mesh then
    redis.call('HDEL', P .. 'owned:' .. dead, peer)
    if redis.call('HGET', P .. 'routes', peer) == dead then
      redis.call('HDEL', P .. 'routes', peer)
      if redis.call('HGET', P .. 'peer:' .. peer, 'hub') == dead then
        remove_state(peer, me)
        removed = removed + 1
      end
    end
  end
end
if mode == 'expired' and redis.call('HLEN', P .. 'owned:' .. dead) == 0 then
  redis.call('DEL', P .. 'lease:' .. dead)
  redis.call('ZREM', P .. 'hubs', dead)
end
return {'ok', tostring(removed)}
"#
    ))
});

/// ARGV: hub, token. Gives up the lease if this registration holds it (a clean shutdown,
/// after the hub's peers were removed). `{ok}` or `{lease-lost}`.
pub(crate) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub, token = ARGV[1], ARGV[2]
if redis.call('HGET', P .. 'lease:' .. hub, 'token') ~= token then return {'lease-lost'} end
redis.call('DEL', P .. 'lease:' .. hub)
redis.call('ZREM', P .. 'hubs', hub)
return {'ok'}
"#
    ))
});

/// ARGV: sender's mesh, target peer, inbox message JSON. Publishes the message on the inbox
/// of the hub that holds `peer` if the peer is in the sender's mesh: `{ok, hub}`,
/// `{absent}` (unknown, or its hub is not listening) or `{other-mesh}`.
pub(crate) static ROUTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local mesh, peer, message = ARGV[1], ARGV[2], ARGV[3]
local hub = redis.call('HGET', P .. 'routes', peer)
if not hub then return {'absent'} end
if redis.call('HGET', P .. 'owned:' .. hub, peer) ~= mesh then return {'other-mesh'} end
if redis.call('PUBLISH', P .. 'chan:inbox:' .. hub, message) == 0 then return {'absent'} end
return {'ok', hub}
"#
    ))
});

/// ARGV: expected version, objects JSON, this hub, tag (of the objects at the next
/// version). Compare-and-set of the cluster-wide hub
/// objects; announces the new version. `{ok, version}` or `{conflict, current-version}`.
pub(crate) static SET_HUB_OBJECTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local expected, objects, hub, tag = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local k = P .. 'hub-objects'
local version = tonumber(redis.call('HGET', k, 'version') or '0')
if version ~= expected then return {'conflict', tostring(version)} end
version = version + 1
redis.call('HSET', k, 'version', version, 'objects', objects, 'tag', tag)
-- A change made through a hub: no hub's older copy may replace it (SEED_HUB_OBJECTS).
redis.call('HDEL', k, 'seeded')
redis.call('PUBLISH', P .. 'chan:hub-objects',
  '{"version":' .. version .. ',"hub":' .. cjson.encode(hub) .. '}')
return {'ok', tostring(version)}
"#
    ))
});

/// ARGV: version, objects JSON, this hub, tag. Seeds the hub objects from a hub's copy of
/// them at its version, when Redis has none (a new cluster, or Redis lost its state) or
/// holds only a seeded copy of an older version: every hub offers its copy after a Redis
/// restart, and the newest any hub holds wins, whatever order they come in. A copy
/// changed through a hub since (`seeded` gone) is never replaced. `{seeded, version}` and
/// an announcement, or `{exists, current-version}`.
pub(crate) static SEED_HUB_OBJECTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local version, objects, hub, tag = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local k = P .. 'hub-objects'
local cur = redis.call('HMGET', k, 'version', 'seeded')
if cur[1] and not (cur[2] == '1' and tonumber(cur[1]) < version) then
  return {'exists', cur[1]}
end
redis.call('HSET', k, 'version', version, 'objects', objects, 'tag', tag, 'seeded', '1')
redis.call('PUBLISH', P .. 'chan:hub-objects',
  '{"version":' .. version .. ',"hub":' .. cjson.encode(hub) .. '}')
return {'seeded', tostring(version)}
"#
    ))
});

/// ARGV: peer, entry JSON, most entries, this hub. Blocks a PeerName cluster-wide and
/// announces it: `{added}`, `{updated}` (blocked already: its entry replaced) or `{full}`
/// (the list holds `most` PeerNames). Marks the list as existing (see `SEED_BLOCKED`).
pub(crate) static BLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local peer, entry, most, hub = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local k = P .. 'blocked'
local known = redis.call('HEXISTS', k, peer) == 1
if not known and redis.call('HLEN', k) >= most then return {'full'} end
redis.call('HSET', k, peer, entry)
redis.call('SET', P .. 'blocked-seeded', '1')
redis.call('PUBLISH', P .. 'chan:blocked',
  '{"peer":' .. cjson.encode(peer) .. ',"blocked":true,"hub":' .. cjson.encode(hub) .. '}')
if known then return {'updated'} end
return {'added'}
"#
    ))
});

/// ARGV: peer, this hub. Lifts a PeerName's block cluster-wide and announces it: `{removed}`
/// or `{absent}`.
pub(crate) static UNBLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local peer, hub = ARGV[1], ARGV[2]
redis.call('SET', P .. 'blocked-seeded', '1')
if redis.call('HDEL', P .. 'blocked', peer) == 0 then return {'absent'} end
redis.call('PUBLISH', P .. 'chan:blocked',
  '{"peer":' .. cjson.encode(peer) .. ',"blocked":false,"hub":' .. cjson.encode(hub) .. '}')
return {'removed'}
"#
    ))
});

/// ARGV: this hub, then peer, entry JSON pairs. Seeds the cluster's block list from a hub's
/// copy if Redis never had one (a new cluster, or Redis lost its state; an emptied list
/// still exists): `{seeded}` and an announcement, or `{exists}`.
pub(crate) static SEED_BLOCKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local hub = ARGV[1]
if redis.call('EXISTS', P .. 'blocked-seeded') == 1 then return {'exists'} end
for i = 2, #ARGV - 1, 2 do
  redis.call('HSET', P .. 'blocked', ARGV[i], ARGV[i + 1])
end
redis.call('SET', P .. 'blocked-seeded', '1')
redis.call('PUBLISH', P .. 'chan:blocked', '{"seeded":true,"hub":' .. cjson.encode(hub) .. '}')
return {'seeded'}
"#
    ))
});

/// ARGV: most entries, longest entry. The cluster's block list, within the hub's bounds:
/// `{exists, left_out, bad_keys, peer, entry, …}` with `exists` `1` once the list was ever
/// written (else `0`: seed it). At most `most` entries are returned (`left_out` says how
/// many more there are); a key that cannot be a PeerName (not 40 bytes) is skipped and
/// counted in `bad_keys`; an entry longer than `longest` comes back empty (its block kept,
/// its reason lost). Only another client can have written such things, and without these
/// bounds one reply could take any amount of a hub's memory, or go past Redis's output
/// limit for a subscribed client (32 MiB), which closes the hub's connection at every read.
pub(crate) static BLOCKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local most, longest = tonumber(ARGV[1]), tonumber(ARGV[2])
local k = P .. 'blocked'
local out = {tostring(redis.call('EXISTS', P .. 'blocked-seeded')), '0', '0'}
local cursor, taken, bad, seen = '0', 0, 0, {}
repeat
  local page = redis.call('HSCAN', k, cursor, 'COUNT', 256)
  cursor = page[1]
  local items = page[2]
  for i = 1, #items, 2 do
    local peer, entry = items[i], items[i + 1]
    if not seen[peer] and taken < most then
      seen[peer] = true
      if #peer ~= 40 then
        bad = bad + 1
      else
        taken = taken + 1
        if #entry > longest then entry = '' end
        out[#out + 1] = peer
        out[#out + 1] = entry
      end
    end
  end
until cursor == '0' or taken >= most
out[2] = tostring(math.max(redis.call('HLEN', k) - taken - bad, 0))
out[3] = tostring(bad)
return out
"#
    ))
});
