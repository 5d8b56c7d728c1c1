-- MS-P2PPI (Peer-to-Peer Presence Protocol) over TLS: a Wireshark/tshark dissector.
--
-- Follows the wire profile of p2ppi-hub (DESIGN 2): big-endian integers; a message is a
-- separation header ("SP", length) then fields (id, field-length including its 4-byte
-- header, body); the first field is a MESSAGE_HEADER (version 1.0, type, message id).
--
-- Where it applies:
--   * the decrypted TLS payload of TCP port 7350 (preference "p2ppi.port"; 0 turns it off),
--     which is also decoded as TLS;
--   * heuristically on any TLS payload that starts with "SP" and a valid MESSAGE_HEADER;
--     once a TCP stream is recognised, all of its payload is dissected as P2PPI.
-- Messages split across TLS records are reassembled (TLS "Reassemble application data"
-- must stay on, the default); several messages in one record are shown one by one.
--
-- Everything DESIGN 2.4 calls malformed is marked with expert info that says what a
-- receiver does: rules 1 and 2 (framing, MESSAGE_HEADER) drop the message and CLOSE the
-- connection; rules 3 and 4 (unknown type, body not exactly as DESIGN 2.3) SILENTLY DROP it
-- and keep the connection.
--
-- Use:  tshark -r capture.pcap -X lua_script:p2ppi.lua -o tls.keylog_file:keys.log
--       (or copy it into the Wireshark personal plugins folder)
-- Filter fields: p2ppi.length, p2ppi.type (numeric, shown by name), p2ppi.message_id,
-- p2ppi.name, p2ppi.value, p2ppi.mime_type, p2ppi.entries; p2ppi.message for STRING_MESSAGE.
-- `p2ppi-hub decode --hex` prints the same field names from the hub's own codec.

local p2ppi = Proto("p2ppi", "MS-P2PPI Peer-to-Peer Presence Protocol")

local SIGNATURE = 0x5350
local MAX_LENGTH = 0xFFEB -- the whole message must be smaller than 0xFFF0 bytes
local SEPARATION_LEN = 4
local FIELD_HEADER_LEN = 4
local HEADER_FIELD_LEN = 12

local MESSAGE_TYPES = {
    [0x01] = "APPLICATION_DEFINED_MESSAGE",
    [0x02] = "NOTIFY_MESSAGE",
    [0x03] = "SUBSCRIBE_MESSAGE",
    [0x04] = "UNSUBSCRIBE_MESSAGE",
    [0x05] = "REQUEST_MESSAGE",
    [0x06] = "RESPONSE_MESSAGE",
}

local ID = {
    MESSAGE_HEADER = 0x0100,
    STRING_NAME = 0x0201,
    STRING_VALUE = 0x0202,
    STRING_MIME_TYPE = 0x0203,
    STRING_MESSAGE = 0x0204,
    STRUCTURE_NAME_VALUE = 0x0301,
    STRUCTURE_MIME_TYPE_TEXT = 0x0302,
    ARRAY_NAME_VALUE_LIST = 0x0401,
    ARRAY_NAME_LIST = 0x0402,
}
local FIELD_NAMES = {}
for name, id in pairs(ID) do FIELD_NAMES[id] = name end

local f = p2ppi.fields
f.signature = ProtoField.uint16("p2ppi.signature", "Signature", base.HEX)
f.length = ProtoField.uint16("p2ppi.length", "Length", base.DEC)
f.field_id = ProtoField.uint16("p2ppi.field.id", "Field id", base.HEX, FIELD_NAMES)
f.field_length = ProtoField.uint16("p2ppi.field.length", "Field length", base.DEC)
f.major = ProtoField.uint8("p2ppi.version.major", "Major version", base.DEC)
f.minor = ProtoField.uint8("p2ppi.version.minor", "Minor version", base.DEC)
f.reserved = ProtoField.uint8("p2ppi.reserved", "Reserved", base.HEX)
f.type = ProtoField.uint8("p2ppi.type", "Message type", base.DEC, MESSAGE_TYPES)
f.message_id = ProtoField.uint32("p2ppi.message_id", "Message ID", base.DEC)
f.string_flags = ProtoField.uint16("p2ppi.string.flags", "Flags", base.HEX)
f.l_bit = ProtoField.bool("p2ppi.string.flags.l", "L (length > 0)", 16, nil, 0x0001)
f.string_length = ProtoField.uint16("p2ppi.string.length", "String length", base.DEC)
f.name = ProtoField.string("p2ppi.name", "Name", base.UNICODE)
f.value = ProtoField.string("p2ppi.value", "Value", base.UNICODE)
f.mime_type = ProtoField.string("p2ppi.mime_type", "MIME type", base.UNICODE)
f.message = ProtoField.string("p2ppi.message", "Message", base.UNICODE)
f.entries = ProtoField.uint16("p2ppi.entries", "Entries", base.DEC)
f.undecoded = ProtoField.bytes("p2ppi.undecoded", "Undecoded bytes")

local STRING_FIELDS = {
    [ID.STRING_NAME] = f.name,
    [ID.STRING_VALUE] = f.value,
    [ID.STRING_MIME_TYPE] = f.mime_type,
    [ID.STRING_MESSAGE] = f.message,
}

local ex_close = ProtoExpert.new("p2ppi.malformed.close",
    "Malformed: the receiver drops the message and closes the connection (DESIGN 2.4 rules 1, 2)",
    expert.group.MALFORMED, expert.severity.ERROR)
local ex_drop = ProtoExpert.new("p2ppi.malformed.drop",
    "Malformed: the receiver silently drops the message, the connection stays (DESIGN 2.4 rules 3, 4)",
    expert.group.MALFORMED, expert.severity.WARN)
local ex_ignored = ProtoExpert.new("p2ppi.ignored",
    "Bits sent as zero are set (ignored on receipt)",
    expert.group.PROTOCOL, expert.severity.NOTE)
local ex_incomplete = ProtoExpert.new("p2ppi.incomplete",
    "Message continues beyond the captured payload",
    expert.group.REASSEMBLE, expert.severity.WARN)
p2ppi.experts = { ex_close, ex_drop, ex_ignored, ex_incomplete }

local function close_conn(item, rule, what)
    item:add_proto_expert_info(ex_close, string.format(
        "DESIGN 2.4 rule %d: %s: the receiver drops the message and closes the connection",
        rule, what))
end

-- How many rule 3/4 problems the message being dissected has shown.
local drops = 0

local function drop_msg(item, rule, what)
    drops = drops + 1
    item:add_proto_expert_info(ex_drop, string.format(
        "DESIGN 2.4 rule %d: %s: the receiver silently drops the message and keeps the connection",
        rule, what))
end

-- Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), as Rust's
-- std::str::from_utf8 checks it; Lua 5.2 has no utf8 library. Returns whether `s` is valid
-- and a copy fit to display, with U+FFFD for each byte that starts no valid sequence.
local REPLACEMENT = "\239\191\189"

local function utf8_scan(s)
    local i, n = 1, #s
    local valid, out = true, {}
    while i <= n do
        local c = s:byte(i)
        local need, lo, hi = -1, 0x80, 0xBF
        if c < 0x80 then
            need = 0
        elseif c >= 0xC2 and c <= 0xDF then
            need = 1
        elseif c >= 0xE0 and c <= 0xEF then
            need = 2
            if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
        elseif c >= 0xF0 and c <= 0xF4 then
            need = 3
            if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
        end
        local ok = need >= 0 and i + need <= n
        for k = 1, ok and need or 0 do
            local b = s:byte(i + k)
            local l, h = 0x80, 0xBF
            if k == 1 then l, h = lo, hi end
            if b < l or b > h then ok = false end
        end
        if ok then
            table.insert(out, s:sub(i, i + need))
            i = i + need + 1
        else
            valid = false
            table.insert(out, REPLACEMENT)
            i = i + 1
        end
    end
    return valid, table.concat(out)
end

-- A string for a tree label: quoted, with quotes, backslashes and control characters
-- escaped so a label stays on one line.
local function quote(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        if c == "\n" then return "\\n" end
        if c == "\r" then return "\\r" end
        if c == "\t" then return "\\t" end
        if c == '"' or c == "\\" then return "\\" .. c end
        return string.format("\\x%02x", c:byte())
    end) .. '"'
end

local function undecoded(tree, tvb, offset, limit)
    if limit > offset then
        tree:add(f.undecoded, tvb(offset, limit - offset))
    end
end

-- Dissects one field at `offset`, not beyond `limit`. Returns the offset after it, or nil
-- when the field cannot be delimited (the caller stops). Problems are marked as rule 4
-- drops; `expected` (a field id) marks a field of the wrong kind.
local dissect_field

local function dissect_string(tvb, tree, id, body, body_end)
    if body_end - body < 4 then
        drop_msg(tree, 4, FIELD_NAMES[id] .. " body shorter than flags and length")
        undecoded(tree, tvb, body, body_end)
        return nil
    end
    local flags = tvb(body, 2):uint()
    local flags_item = tree:add(f.string_flags, tvb(body, 2))
    flags_item:add(f.l_bit, tvb(body, 2))
    local len = tvb(body + 2, 2):uint()
    tree:add(f.string_length, tvb(body + 2, 2))
    local text_off = body + 4
    local actual = body_end - text_off
    local shown = math.min(len, actual)
    local text = ""
    if shown > 0 then
        local range = tvb(text_off, shown)
        local valid
        valid, text = utf8_scan(range:raw())
        local item = tree:add(STRING_FIELDS[id], range, text)
        if not valid then
            drop_msg(item, 4, FIELD_NAMES[id] .. " is not valid UTF-8")
        end
    else
        tree:add(STRING_FIELDS[id], tvb(body + 2, 2), "")
    end
    if actual ~= len then
        drop_msg(tree, 4, string.format("%s declares %d bytes but its field holds %d",
            FIELD_NAMES[id], len, actual))
        undecoded(tree, tvb, text_off + shown, body_end)
    end
    local l_set = flags % 2 == 1
    if l_set ~= (len > 0) then
        drop_msg(flags_item, 4, string.format("%s L bit %s but the length is %d",
            FIELD_NAMES[id], l_set and "set" or "clear", len))
    end
    if flags - (flags % 2) ~= 0 then
        flags_item:add_proto_expert_info(ex_ignored)
    end
    tree:append_text(": " .. quote(text))
    return text
end

-- Dissects one field of each kind in `expected_list`, in order, from `offset`; returns the
-- offset after them, or nil when one could not be delimited.
local function dissect_sequence(tvb, tree, offset, limit, expected_list)
    local texts = {}
    for _, expected in ipairs(expected_list) do
        if offset >= limit then
            drop_msg(tree, 4, "missing " .. FIELD_NAMES[expected])
            return nil
        end
        local text
        offset, text = dissect_field(tvb, tree, offset, limit, expected)
        if not offset then return nil end
        table.insert(texts, text and quote(text) or "?")
    end
    tree:append_text(": " .. table.concat(texts, " = "))
    return offset
end

local function expect_end(tvb, tree, offset, limit, what)
    if offset < limit then
        drop_msg(tree, 4, string.format("%d trailing bytes after %s", limit - offset, what))
        undecoded(tree, tvb, offset, limit)
    end
end

dissect_field = function(tvb, parent, offset, limit, expected)
    if limit - offset < FIELD_HEADER_LEN then
        local item = parent:add(p2ppi, tvb(offset, limit - offset), "Truncated field header")
        drop_msg(item, 4, string.format("field header cut short (%d of 4 bytes)", limit - offset))
        return nil
    end
    local id = tvb(offset, 2):uint()
    local flen = tvb(offset + 2, 2):uint()
    local name = FIELD_NAMES[id] or string.format("Unknown field 0x%04x", id)
    local span = math.max(FIELD_HEADER_LEN, math.min(flen, limit - offset))
    local tree = parent:add(p2ppi, tvb(offset, span), name)
    tree:add(f.field_id, tvb(offset, 2))
    tree:add(f.field_length, tvb(offset + 2, 2))
    local unexpected = expected and id ~= expected
    if unexpected then
        drop_msg(tree, 4, string.format("expected %s, found %s", FIELD_NAMES[expected], name))
    end
    if not FIELD_NAMES[id] then
        drop_msg(tree, 4, string.format("unknown field id 0x%04x", id))
    end
    if flen < FIELD_HEADER_LEN then
        drop_msg(tree, 4, string.format("field-length %d is below the 4-byte header", flen))
        return nil
    end
    if offset + flen > limit then
        drop_msg(tree, 4, string.format("field-length %d runs past its container (%d bytes left)",
            flen, limit - offset))
        undecoded(tree, tvb, offset + FIELD_HEADER_LEN, limit)
        return nil
    end
    local body, body_end = offset + FIELD_HEADER_LEN, offset + flen
    if unexpected and not STRING_FIELDS[id] then
        -- A container where something else belongs is not opened: nesting stays bounded
        -- (message, array, structure, string) whatever the input.
        undecoded(tree, tvb, body, body_end)
        return body_end
    end
    if STRING_FIELDS[id] then
        return body_end, dissect_string(tvb, tree, id, body, body_end)
    elseif id == ID.STRUCTURE_NAME_VALUE then
        local after = dissect_sequence(tvb, tree, body, body_end, { ID.STRING_NAME, ID.STRING_VALUE })
        if after then expect_end(tvb, tree, after, body_end, name) end
    elseif id == ID.STRUCTURE_MIME_TYPE_TEXT then
        local after = dissect_sequence(tvb, tree, body, body_end, { ID.STRING_MIME_TYPE, ID.STRING_VALUE })
        if after then expect_end(tvb, tree, after, body_end, name) end
    elseif id == ID.ARRAY_NAME_VALUE_LIST or id == ID.ARRAY_NAME_LIST then
        if body_end - body < 2 then
            drop_msg(tree, 4, name .. " has no entry count")
            undecoded(tree, tvb, body, body_end)
            return body_end
        end
        local entries = tvb(body, 2):uint()
        local count_item = tree:add(f.entries, tvb(body, 2))
        tree:append_text(string.format(" (%d entries)", entries))
        local entry_id = id == ID.ARRAY_NAME_VALUE_LIST and ID.STRUCTURE_NAME_VALUE or ID.STRING_NAME
        -- Smallest entry: two empty strings in a structure (20 bytes), or an empty name (8).
        local min_entry = id == ID.ARRAY_NAME_VALUE_LIST and 20 or 8
        local at = body + 2
        local overflows = entries * min_entry > body_end - at
        if overflows then
            drop_msg(count_item, 4, string.format(
                "%s declares %d entries, more than its %d bytes can hold", name, entries, body_end - at))
        end
        local i = 0
        while i < entries and at < body_end do
            local next_at = dissect_field(tvb, tree, at, body_end, entry_id)
            if not next_at then return body_end end
            at = next_at
            i = i + 1
        end
        if i < entries and not overflows then
            drop_msg(count_item, 4, string.format("%s declares %d entries but holds %d", name, entries, i))
        end
        expect_end(tvb, tree, at, body_end, name)
    elseif id == ID.MESSAGE_HEADER then
        if flen ~= HEADER_FIELD_LEN then
            drop_msg(tree, 4, string.format("MESSAGE_HEADER field-length %d, must be 12", flen))
        end
        undecoded(tree, tvb, body, body_end)
    else
        undecoded(tree, tvb, body, body_end)
    end
    return body_end
end

-- The body after the MESSAGE_HEADER, as DESIGN 2.3 lists it for each type.
local BODIES = {
    [0x01] = ID.STRUCTURE_MIME_TYPE_TEXT,
    [0x02] = ID.ARRAY_NAME_VALUE_LIST,
    [0x06] = ID.ARRAY_NAME_VALUE_LIST,
}

-- One whole message of `total` bytes at `offset`. Returns a short summary for the Info
-- column, and true when the receiver closes the connection on it.
local function dissect_message(tvb, pinfo, root, offset, total)
    local tree = root:add(p2ppi, tvb(offset, total))
    local sep = tree:add(p2ppi, tvb(offset, SEPARATION_LEN), "Separation header")
    sep:add(f.signature, tvb(offset, 2))
    sep:add(f.length, tvb(offset + 2, 2))
    local fields, limit = offset + SEPARATION_LEN, offset + total
    if total - SEPARATION_LEN < HEADER_FIELD_LEN then
        close_conn(tree, 2, string.format("length %d is shorter than a MESSAGE_HEADER (12)",
            total - SEPARATION_LEN))
        undecoded(tree, tvb, fields, limit)
        tree:append_text(", malformed (closes)")
        return "malformed (closes)", true
    end
    local hid, hlen = tvb(fields, 2):uint(), tvb(fields + 2, 2):uint()
    local header = tree:add(p2ppi, tvb(fields, HEADER_FIELD_LEN), FIELD_NAMES[hid] or "First field")
    header:add(f.field_id, tvb(fields, 2))
    header:add(f.field_length, tvb(fields + 2, 2))
    if hid ~= ID.MESSAGE_HEADER then
        close_conn(header, 2, "the first field is not a MESSAGE_HEADER")
        undecoded(tree, tvb, fields + FIELD_HEADER_LEN, limit)
        tree:append_text(", malformed (closes)")
        return "malformed (closes)", true
    end
    local major, minor = tvb(fields + 4, 1):uint(), tvb(fields + 5, 1):uint()
    header:add(f.major, tvb(fields + 4, 1))
    header:add(f.minor, tvb(fields + 5, 1))
    local reserved = header:add(f.reserved, tvb(fields + 6, 1))
    if tvb(fields + 6, 1):uint() ~= 0 then reserved:add_proto_expert_info(ex_ignored) end
    local mtype = tvb(fields + 7, 1):uint()
    header:add(f.type, tvb(fields + 7, 1))
    local id = tvb(fields + 8, 4):uint()
    header:add(f.message_id, tvb(fields + 8, 4))
    local type_name = MESSAGE_TYPES[mtype] or string.format("unknown type 0x%02x", mtype)
    local summary = string.format("%s #%d", type_name, id)
    tree:append_text(string.format(", %s, ID %d", type_name, id))
    local closes = false
    if hlen ~= HEADER_FIELD_LEN then
        close_conn(header, 2, string.format("MESSAGE_HEADER field-length %d, must be 12", hlen))
        closes = true
    elseif major ~= 1 or minor ~= 0 then
        close_conn(header, 2, string.format("version %d.%d, only 1.0 is defined", major, minor))
        closes = true
    end
    if closes then
        undecoded(tree, tvb, fields + HEADER_FIELD_LEN, limit)
        tree:append_text(", malformed (closes)")
        return summary .. " malformed (closes)", true
    end
    local body = fields + HEADER_FIELD_LEN
    if not MESSAGE_TYPES[mtype] then
        drop_msg(header, 3, string.format("unknown message type 0x%02x", mtype))
        undecoded(tree, tvb, body, limit)
        tree:append_text(", unknown type (dropped)")
        return summary .. " (dropped)"
    end
    local expected = BODIES[mtype]
    drops = 0
    if expected then
        if body >= limit then
            drop_msg(tree, 4, string.format("%s without its %s", type_name, FIELD_NAMES[expected]))
        else
            local after = dissect_field(tvb, tree, body, limit, expected)
            if after then expect_end(tvb, tree, after, limit, type_name) end
        end
    elseif body < limit then
        drop_msg(tree, 4, string.format("%s carries %d bytes, it must have no body",
            type_name, limit - body))
        -- Show what is there anyway.
        local at = body
        while at and at < limit do at = dissect_field(tvb, tree, at, limit, nil) end
    end
    if drops > 0 then
        tree:append_text(", malformed (dropped)")
        return summary .. " malformed (dropped)"
    end
    return summary
end

-- Cuts a TLS payload into messages, asking TLS for more when one is split.
local function dissect_stream(tvb, pinfo, root)
    local len = tvb:len()
    local offset = 0
    local summaries = {}
    pinfo.cols.protocol = "P2PPI"
    while offset < len do
        local remaining = len - offset
        if remaining < SEPARATION_LEN then
            if pinfo.can_desegment > 0 then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
                break
            end
            local item = root:add(p2ppi, tvb(offset, remaining), "Separation header cut short")
            item:add_proto_expert_info(ex_incomplete)
            offset = len
            break
        end
        local sig, mlen = tvb(offset, 2):uint(), tvb(offset + 2, 2):uint()
        if sig ~= SIGNATURE or mlen > MAX_LENGTH then
            local tree = root:add(p2ppi, tvb(offset, remaining), "Not a P2PPI message")
            tree:add(f.signature, tvb(offset, 2))
            tree:add(f.length, tvb(offset + 2, 2))
            if sig ~= SIGNATURE then
                close_conn(tree, 1, string.format("signature 0x%04x, expected 0x5350 (\"SP\")", sig))
            else
                close_conn(tree, 1, string.format("length %d exceeds 0xFFEB (65515)", mlen))
            end
            -- The stream cannot be cut into messages after this point.
            undecoded(tree, tvb, offset + SEPARATION_LEN, len)
            table.insert(summaries, "malformed framing (closes)")
            offset = len
            break
        end
        local total = SEPARATION_LEN + mlen
        if remaining < total then
            if pinfo.can_desegment > 0 then
                pinfo.desegment_offset = offset
                pinfo.desegment_len = total - remaining
                break
            end
            local item = root:add(p2ppi, tvb(offset, remaining),
                string.format("MS-P2PPI message, %d of %d bytes", remaining, total))
            item:add_proto_expert_info(ex_incomplete)
            offset = len
            break
        end
        local summary, closes = dissect_message(tvb, pinfo, root, offset, total)
        table.insert(summaries, summary)
        offset = offset + total
        if closes then
            -- The receiver has closed the connection: nothing after this is read.
            if offset < len then
                root:add(p2ppi, tvb(offset, len - offset),
                    string.format("%d bytes after the closing message, never read", len - offset))
            end
            offset = len
            break
        end
    end
    if #summaries > 0 then
        pinfo.cols.info = table.concat(summaries, ", ")
    end
    return offset
end

function p2ppi.dissector(tvb, pinfo, tree)
    return dissect_stream(tvb, pinfo, tree)
end

-- Heuristic on TLS payloads: "SP", a length in range, then a MESSAGE_HEADER of version 1.0
-- (checked as far as the payload goes, since a message may be split across records). A
-- stream once recognised stays P2PPI, so its malformed messages are shown too.
local tcp_stream = Field.new("tcp.stream")
local known_streams = {}

local HEADER_PREFIX = { 0x01, 0x00, 0x00, 0x0C, 0x01, 0x00 } -- id, field-length, 1, 0

local function looks_like_p2ppi(tvb)
    local len = tvb:len()
    if len < SEPARATION_LEN then return false end
    if tvb(0, 2):uint() ~= SIGNATURE then return false end
    local mlen = tvb(2, 2):uint()
    if mlen < HEADER_FIELD_LEN or mlen > MAX_LENGTH then return false end
    local n = math.min(len - SEPARATION_LEN, #HEADER_PREFIX)
    for i = 1, n do
        if tvb(SEPARATION_LEN + i - 1, 1):uint() ~= HEADER_PREFIX[i] then return false end
    end
    return true
end

local function heuristic(tvb, pinfo, tree)
    local stream = tcp_stream()
    local key = stream and stream.value
    if not (key and known_streams[key]) then
        if not looks_like_p2ppi(tvb) then return false end
        if key then known_streams[key] = true end
    end
    dissect_stream(tvb, pinfo, tree)
    return true
end

function p2ppi.init()
    known_streams = {}
end

p2ppi.prefs.port = Pref.uint("TLS port", 7350,
    "TCP port whose decrypted TLS payload is MS-P2PPI (0: heuristic detection only)")

local registered_port = 0
local function register_port()
    local tls_ports = DissectorTable.get("tls.port")
    local tcp_ports = DissectorTable.get("tcp.port")
    local tls = Dissector.get("tls")
    if registered_port ~= 0 then
        tls_ports:remove(registered_port, p2ppi)
        tcp_ports:remove(registered_port, tls)
    end
    registered_port = p2ppi.prefs.port
    if registered_port ~= 0 then
        tls_ports:add(registered_port, p2ppi)
        tcp_ports:add(registered_port, tls)
    end
end

function p2ppi.prefs_changed()
    if registered_port ~= p2ppi.prefs.port then register_port() end
end

register_port()
p2ppi:register_heuristic("tls", heuristic)
-- Decode As (e.g. `-d tcp.port==7350,p2ppi`) for a stream already decrypted or never
-- encrypted.
DissectorTable.get("tcp.port"):add_for_decode_as(p2ppi)
