-- ============================================================================ engine
-- Hand-written part of the generated dissector (fusd_wire/trace/wireshark_engine.lua):
-- walks the tables above.  It mirrors fusd_wire.codec's rules for what is code there:
-- framing of names, payloads, dirents, the CUSE info blob, security contexts, request
-- extensions, INIT's self-stated minor, pairing by unique and following INIT.
-- Plain Lua 5.1-5.4 and the BitOp library: runs in every Wireshark since 3.x.

local fuse = Proto("fuse", "FUSE")

F["fuse.type"] = ProtoField.string("fuse.type", "type")
F["fuse.notify_code"] = ProtoField.int32("fuse.notify_code", "notify code", base.DEC, NOTIFY_NAMES)
F["fuse.request_in"] = ProtoField.framenum("fuse.request_in", "request in", base.NONE, frametype.REQUEST)
F["fuse.response_in"] = ProtoField.framenum("fuse.response_in", "response in", base.NONE, frametype.RESPONSE)
F["fuse.latency"] = ProtoField.relative_time("fuse.latency", "latency")
do
    local list = {}
    for _, f in pairs(F) do list[#list + 1] = f end
    fuse.fields = list
end
local E_PROBLEM = ProtoExpert.new("fuse.problem", "FUSE message problem", expert.group.MALFORMED,
                                  expert.severity.ERROR)
fuse.experts = {E_PROBLEM}

local x_dir = Field.new("frame.packet_flags_direction")
local x_iface = Field.new("frame.interface_id")
local x_section = Field.new("frame.section_number")
local x_desc = Field.new("frame.interface_description")
local x_time = Field.new("frame.time_epoch")

local SIZE = {u8 = 1, u16 = 2, u32 = 4, u64 = 8, s8 = 1, s16 = 2, s32 = 4, s64 = 8}

local conns, frames = {}, {}
function fuse.init()
    conns, frames = {}, {}
end

-- ---------------------------------------------------------------------------- helpers
local function fail(msg)
    error({fuse_problem = msg}, 0)
end

local function range(tvb, off, n)
    if n == 0 then
        return tvb(0, 0)  -- a zero-length range at the end of the buffer is refused by some versions
    end
    return tvb(off, n)
end

-- Names are bytes on the wire; shown as UTF-8 (invalid sequences as U+FFFD), as file names are.
local function add_name(tree, f, r)
    tree:add_packet_field(F[f], r, ENC_UTF_8)
end

local function read_int(tvb, off, kind)
    local r = tvb(off, SIZE[kind])
    if kind == "u64" then return r:le_uint64() end
    if kind == "s64" then return r:le_int64() end
    if kind:sub(1, 1) == "s" then return r:le_int() end
    return r:le_uint()
end

-- Add one struct's fields (layout ``lay``) at ``off``; returns its values and subtrees.
local function add_layout(tvb, off, lay, tree)
    local values, trees = {}, {}
    for _, it in ipairs(lay) do
        if it.k == "skip" then
            -- a reserved field the decoder does not show either
        elseif it.k == "struct" then
            local sub = tree and tree:add(F[it.f], tvb(off, it.s))
            trees[it.n] = sub
            values[it.n] = add_layout(tvb, off, it.sub, sub)
        elseif it.k == "array" then
            local es, arr = SIZE[it.e], {}
            for i = 1, it.c do
                local o = off + (i - 1) * es
                if tree then tree:add_le(F[it.f], tvb(o, es)) end
                arr[i] = read_int(tvb, o, it.e)
            end
            values[it.n] = arr
        else
            if tree then tree:add_le(F[it.f], tvb(off, it.s)) end
            values[it.n] = read_int(tvb, off, it.k)
        end
        off = off + it.s
    end
    return values, trees
end

local function pick(v, ctx)
    local list = v.plain
    if v.flagged and (bit.band(ctx.flo, v.mlo) ~= 0 or bit.band(ctx.fhi, v.mhi) ~= 0) then
        list = v.flagged
    end
    local lay = list[1][2]
    for i = 2, #list do
        if ctx.minor >= list[i][1] then lay = list[i][2] else break end
    end
    return lay
end

local function check_len(p, ctx, n)
    if p.len then
        local holder = ctx.parts[p.len[1]]
        local declared = holder and holder[p.len[2]]
        if declared ~= n then
            fail(string.format("%s.%s is %s but the %s has %d bytes", p.len[1], p.len[2], tostring(declared),
                               p.n, n))
        end
    end
end

local function nul_at(tvb, pos, limit)
    if limit <= pos then return nil end
    local i = tvb:raw(pos, limit - pos):find("\0", 1, true)
    return i and pos + i - 1 or nil
end

-- A fuse_secctx_header and its contexts (fields under ``path``); returns the new position.
local function add_secctx(tvb, pos, limit, path, tree)
    if limit - pos < 8 then fail("fuse_secctx_header and contexts: message ends too early") end
    local start = pos
    local size, nr = tvb(pos, 4):le_uint(), tvb(pos + 4, 4):le_uint()
    local sub = tree and tree:add(F[path], tvb(pos, math.min(math.max(size, 8), limit - pos)))
    if sub then
        sub:add_le(F[path .. ".size"], tvb(pos, 4))
        sub:add_le(F[path .. ".nr_secctx"], tvb(pos + 4, 4))
    end
    pos = pos + 8
    for _ = 1, nr do
        if limit - pos < 8 then fail("fuse_secctx_header and contexts: message ends too early") end
        local csize = tvb(pos, 4):le_uint()
        local z = nul_at(tvb, pos + 8, limit)
        if not z then fail("fuse_secctx_header and contexts: no NUL terminator before the end of the message") end
        if limit - (z + 1) < csize then fail("fuse_secctx_header and contexts: message ends too early") end
        if sub then
            local c = sub:add(F[path .. ".contexts"], tvb(pos, z + 1 + csize - pos))
            c:add_le(F[path .. ".contexts.size"], tvb(pos, 4))
            add_name(c, path .. ".contexts.name", range(tvb, pos + 8, z - pos - 8))
            c:add(F[path .. ".contexts.context"], range(tvb, z + 1, csize))
        end
        pos = z + 1 + csize
    end
    local used = pos - start
    if size < used then fail(string.format("fuse_secctx_header.size %d < %d bytes of contexts", size, used)) end
    if limit - pos < size - used then fail("fuse_secctx_header and contexts: message ends too early") end
    return pos + size - used
end

-- ---------------------------------------------------------------------------- body parts
local function add_parts(tvb, pos, limit, parts, ctx, tree)
    for _, p in ipairs(parts) do
        if p.when and not P[p.when](ctx) then
            -- absent in this message's form
        elseif p.k == "struct" then
            local lay = pick(p.v, ctx)
            if limit - pos < lay.size then
                fail(string.format("%s needs %d bytes, %d available", p.d, lay.size, limit - pos))
            end
            local sub = tree and tree:add(F[p.f], range(tvb, pos, lay.size))
            ctx.parts[p.n] = add_layout(tvb, pos, lay, sub)
            pos = pos + lay.size
        elseif p.k == "name" then
            local z = nul_at(tvb, pos, limit)
            if not z then fail(p.d .. ": no NUL terminator before the end of the message") end
            if tree then add_name(tree, p.f, range(tvb, pos, z - pos)) end
            check_len(p, ctx, z - pos)
            pos = z + 1
        elseif p.k == "data" then
            if tree then tree:add(F[p.f], range(tvb, pos, limit - pos)) end
            check_len(p, ctx, limit - pos)
            pos = limit
        elseif p.k == "array" then
            local holder = ctx.parts[p.cnt[1]]
            local n = holder and holder[p.cnt[2]] or 0
            local lay = p.v and pick(p.v, ctx)
            local es = lay and lay.size or SIZE[p.e]
            if (limit - pos) < n * es then fail(p.d .. ": message ends too early") end
            local list = {}
            for i = 1, n do
                if lay then
                    local sub = tree and tree:add(F[p.f], tvb(pos, es))
                    list[i] = add_layout(tvb, pos, lay, sub)
                else
                    if tree then tree:add_le(F[p.f], tvb(pos, es)) end
                    list[i] = read_int(tvb, pos, p.e)
                end
                pos = pos + es
            end
            ctx.parts[p.n] = list
        elseif p.k == "dirents" then
            local lay = pick(p.v, ctx)
            while pos < limit do
                if limit - pos < lay.size then
                    fail(string.format("%s: dirent: %d bytes left, a record needs %d", p.d, limit - pos, lay.size))
                end
                local vals = add_layout(tvb, pos, lay, nil)
                local d = p.inner and vals[p.inner] or vals
                local name_end = pos + lay.size + d.namelen
                if name_end > limit then fail(p.d .. ": dirent name runs past the end") end
                local reclen = name_end - pos + 7 - (name_end - pos + 7) % 8
                if pos + reclen > limit then fail(p.d .. ": dirent record (with alignment) runs past the end") end
                if tree then
                    local sub = tree:add(F[p.f], tvb(pos, reclen))
                    local _, trees = add_layout(tvb, pos, lay, sub)
                    local holder = p.inner and trees[p.inner] or sub
                    add_name(holder, p.name_f, range(tvb, pos + lay.size, d.namelen))
                end
                pos = pos + reclen
            end
        elseif p.k == "keyvalues" then
            if limit > pos then
                local raw = tvb:raw(pos, limit - pos)
                if raw:sub(-1) ~= "\0" then fail("info blob does not end with NUL") end
                local at = pos
                for item in raw:gmatch("([^%z]*)%z") do
                    if #item > 0 and tree then
                        local shown = item:find("=", 1, true) and item or (item .. "=")
                        tree:add(F[p.f], tvb(at, #item), shown)
                    end
                    at = at + #item + 1
                end
            end
            pos = limit
        elseif p.k == "secctx" then
            pos = add_secctx(tvb, pos, limit, p.f, tree)
        end
    end
    if pos < limit then
        local last = parts[#parts]
        fail(string.format("%d unexpected bytes after %s", limit - pos, last and last.d or "the header"))
    end
    return ctx.parts
end

local function add_extensions(tvb, pos, limit, tree)
    while pos < limit do
        if limit - pos < 8 then fail(string.format("extension: %d bytes, a fuse_ext_header needs 8", limit - pos)) end
        local size, etype = tvb(pos, 4):le_uint(), tvb(pos + 4, 4):le_uint()
        if size < 8 or size % 8 ~= 0 or pos + size > limit then
            fail(string.format("extension: bad fuse_ext_header.size %d", size))
        end
        local sub = tree and tree:add(F["fuse.extensions"], tvb(pos, size))
        if sub then sub:add_le(F["fuse.extensions.type"], tvb(pos + 4, 4)) end
        if etype <= FUSE_MAX_NR_SECCTX then
            if sub then sub:add(F["fuse.extensions.kind"], tvb(pos, 0), "secctx") end
            add_secctx(tvb, pos, pos + size, "fuse.extensions.secctx", sub)
        elseif etype == FUSE_EXT_GROUPS then
            if sub then sub:add(F["fuse.extensions.kind"], tvb(pos, 0), "groups") end
            local n = size >= 12 and tvb(pos + 8, 4):le_uint() or 0
            if 12 + 4 * n > size then fail(string.format("extension: %d groups do not fit in %d bytes", n, size)) end
            if sub then
                for i = 0, n - 1 do sub:add_le(F["fuse.extensions.groups"], tvb(pos + 12 + 4 * i, 4)) end
            end
        else
            if sub then
                sub:add(F["fuse.extensions.kind"], tvb(pos, 0), "unknown")
                sub:add(F["fuse.extensions.data"], range(tvb, pos + 8, size - 8))
            end
        end
        pos = pos + size
    end
end

-- ---------------------------------------------------------------------------- messages
local function opcode_name(op)
    return OPCODE_NAMES[op] or ("OPCODE_" .. op)
end

local function errno_name(e)
    if e == 0 then return "OK" end
    return ERRNO_NAMES[e] or tostring(e)
end

local function message_ctx(st, request)
    return {minor = st.minor, flo = st.flo, fhi = st.fhi, parts = {}, request = request}
end

-- Decode a request's body (and extensions); raises a problem.  Returns the body values.
local function decode_request(tvb, st, tree)
    local total = tvb:len()
    local limit = total
    local extlen = tvb(36, 2):le_uint() * 8
    if st.minor >= 38 and extlen > 0 then
        if extlen > total - 40 then
            fail(string.format("total_extlen %d (x8 bytes) exceeds the body of %d bytes", extlen / 8, total - 40))
        end
        limit = total - extlen
        add_extensions(tvb, limit, total, nil)
    end
    local spec = OPS[st.opcode]
    if not spec then fail(string.format("unknown opcode %d; body shown raw", st.opcode)) end
    local ctx = message_ctx(st, nil)
    if st.opcode == FUSE_INIT and limit - 40 >= 8 then
        ctx.minor = math.min(tvb(44, 4):le_uint(), MAX_MINOR)  -- INIT states its own minor
    end
    local parts = add_parts(tvb, 40, limit, spec.req, ctx, tree)
    if tree and limit < total then add_extensions(tvb, limit, total, tree) end
    return parts
end

local function decode_reply(tvb, st, tree)
    local total = tvb:len()
    if st.error ~= 0 then
        if st.error < -4095 or st.error > 0 then
            fail(string.format("error %d is not a negative errno", st.error))
        end
        if total ~= 16 then
            fail(string.format("an error reply carries no body, this one has %d bytes", total - 16))
        end
        return {}
    end
    local spec = OPS[st.req.opcode]
    if not spec or not spec.rep then
        if tree then tree:add(F["fuse.data"], range(tvb, 16, total - 16)) end
        return {}
    end
    local ctx = message_ctx(st, st.req.parts)
    if st.req.opcode == FUSE_INIT and total - 16 >= 8 then
        ctx.minor = math.min(tvb(20, 4):le_uint(), MAX_MINOR)
    end
    return add_parts(tvb, 16, total, spec.rep, ctx, tree)
end

local function decode_notify(tvb, st, tree)
    local spec = NOTIFY[st.error]
    if not spec then fail(string.format("unknown code %d; body shown raw", st.error)) end
    return add_parts(tvb, 16, tvb:len(), spec.body, message_ctx(st, nil), tree)
end

-- ---------------------------------------------------------------------------- connections
local function conn_for(pinfo)
    local sec, ifc = x_section(), x_iface()
    local key = (sec and sec.value or 0) .. ":" .. (ifc and ifc.value or 0)
    local c = conns[key]
    if c then return c end
    c = {minor = MAX_MINOR, flo = 0, fhi = 0, kind = "fuse", pending = {}}
    local d = x_desc()
    local desc = d and d.value or ""
    local first = desc:match("^(%S+)")
    if first and not first:find("=", 1, true) then c.kind = first end
    local m = desc:match("minor=(%d+)")
    if m then c.minor = math.min(tonumber(m), MAX_MINOR) end
    local hex = desc:match("flags=0[xX](%x+)")
    if hex then
        c.flo = tonumber(hex:sub(-8), 16)
        c.fhi = #hex > 8 and tonumber(hex:sub(1, -9), 16) or 0
    end
    conns[key] = c
    return c
end

local function guess_direction(tvb)
    local n = tvb:len()
    if n >= 16 and n < 40 then return 2 end
    if n >= 8 and tvb(4, 4):le_int() <= 0 then return 2 end
    return 1
end

-- First time a frame is seen: its protocol state, its pairing, and what it changes.
local function prepare(tvb, pinfo)
    local conn = conn_for(pinfo)
    local d = x_dir()
    local st = {minor = conn.minor, flo = conn.flo, fhi = conn.fhi, kind = conn.kind, dir = d and d.value}
    local t = x_time()
    local now = t and t.value
    if st.dir ~= 1 and st.dir ~= 2 then
        st.dir = guess_direction(tvb)
        st.problem = "packet has no direction in epb_flags; guessed from the header"
    end
    local total = tvb:len()
    if st.dir == 1 then
        st.type = "request"
        if total < 40 then
            st.fatal = string.format("fuse_in_header needs 40 bytes, %d available", total)
            return st
        end
        st.opcode = tvb(4, 4):le_uint()
        st.unique = tostring(tvb(8, 8):le_uint64())
        if st.opcode == CUSE_INIT then  -- a capture whose interface description does not say
            conn.kind, st.kind = "cuse", "cuse"
        end
        local hlen = tvb(0, 4):le_uint()
        local ok, res = true, nil
        if hlen ~= total then
            ok, res = false, {fuse_problem = string.format("fuse_in_header.len is %d but the message has %d bytes",
                                                           hlen, total)}
        else
            ok, res = pcall(decode_request, tvb, st, nil)
        end
        st.ok = ok
        if not ok then st.err = type(res) == "table" and res.fuse_problem or tostring(res) end
        local spec = OPS[st.opcode]
        if not spec or spec.rep then
            conn.pending[st.unique] = {frame = pinfo.number, opcode = st.opcode, time = now,
                                       parts = ok and res or {}, st = st}
        end
        return st
    end
    if total < 16 then
        st.type = "reply"
        st.fatal = string.format("%d bytes, shorter than fuse_out_header (16)", total)
        return st
    end
    st.error = tvb(4, 4):le_int()
    st.unique = tostring(tvb(8, 8):le_uint64())
    local hlen = tvb(0, 4):le_uint()
    local lenbad = hlen ~= total and string.format("fuse_out_header.len is %d but the message has %d bytes",
                                                   hlen, total) or nil
    if st.unique == "0" then
        st.type = "notify"
        local ok, res = false, {fuse_problem = lenbad}
        if not lenbad then ok, res = pcall(decode_notify, tvb, st, nil) end
        st.ok = ok
        if not ok then st.err = type(res) == "table" and res.fuse_problem or tostring(res) end
        return st
    end
    st.type = "reply"
    local req = conn.pending[st.unique]
    if not req then
        st.ok = false
        st.err = "reply: unique " .. st.unique .. " answers no request in the capture"
        return st
    end
    conn.pending[st.unique] = nil
    req.st.reply_frame = pinfo.number
    st.req = {frame = req.frame, opcode = req.opcode, time = req.time, parts = req.parts}
    if now and req.time then st.latency = now - req.time end
    local ok, res = false, {fuse_problem = lenbad}
    if not lenbad then ok, res = pcall(decode_reply, tvb, st, nil) end
    st.ok = ok
    if not ok then
        st.err = "reply to " .. opcode_name(req.opcode) .. ": " .. (type(res) == "table" and res.fuse_problem or
                                                                     tostring(res))
    elseif st.error == 0 and req.opcode == FUSE_INIT and res.fuse_init_out then
        local out = res.fuse_init_out
        conn.minor = math.min(out.minor, conn.minor, MAX_MINOR)
        conn.flo, conn.fhi = out.flags or 0, 0
        if conn.minor >= 36 and bit.band(conn.flo, FUSE_INIT_EXT) ~= 0 and out.flags2 then
            conn.fhi = out.flags2
        end
    elseif st.error == 0 and req.opcode == CUSE_INIT and res.cuse_init_out then
        local out = res.cuse_init_out
        conn.minor = math.min(out.minor, conn.minor)
        conn.flo, conn.fhi = out.flags, 0
    end
    return st
end

-- ---------------------------------------------------------------------------- the dissector
local function show_problem(root, tvb, text, raw_from)
    if raw_from and tvb:len() >= raw_from then
        root:add(F["fuse.data"], range(tvb, raw_from, tvb:len() - raw_from))
    end
    root:add_proto_expert_info(E_PROBLEM, text)
end

function fuse.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "FUSE"
    local st = frames[pinfo.number]
    if not st then
        st = prepare(tvb, pinfo)
        frames[pinfo.number] = st
    end
    local total = tvb:len()
    local root = tree:add(fuse, tvb())
    if st.kind == "cuse" then pinfo.cols.protocol = "CUSE" end
    root:add(F["fuse.type"], tvb(0, 0), st.type):set_generated()
    if st.problem then root:add_proto_expert_info(E_PROBLEM, st.problem) end
    if st.fatal then
        root:append_text(": " .. st.fatal)
        pinfo.cols.info = st.type == "request" and ("unique: ?, opcode: ?, insize: " .. total)
                          or ("unique: ?, outsize: " .. total)
        show_problem(root, tvb, st.fatal, nil)
        return total
    end
    if st.type == "request" then
        add_layout(tvb, 0, IN_HEADER, root)
        local name = opcode_name(st.opcode)
        local info = string.format("unique: %s, opcode: %s (%d), nodeid: %s, insize: %d, pid: %d", st.unique, name,
                                   st.opcode, tostring(tvb(16, 8):le_uint64()), total, tvb(32, 4):le_uint())
        pinfo.cols.info = info
        root:append_text(", " .. info)
        if st.reply_frame then root:add(F["fuse.response_in"], tvb(0, 0), st.reply_frame):set_generated() end
        if st.ok then
            decode_request(tvb, st, root)
        else
            show_problem(root, tvb, "request: " .. st.err, 40)
        end
        return total
    end
    if st.type == "notify" then
        local off = 0
        for _, it in ipairs(OUT_HEADER) do  -- the error slot holds the notify code
            root:add_le(it.f == "fuse.error" and F["fuse.notify_code"] or F[it.f], tvb(off, it.s))
            off = off + it.s
        end
        local info = string.format("NOTIFY: code=%d (%s), length=%d", st.error,
                                   NOTIFY_NAMES[st.error] or ("NOTIFY_" .. st.error), total)
        pinfo.cols.info = info
        root:append_text(", " .. info)
        if st.ok then
            decode_notify(tvb, st, root)
        else
            show_problem(root, tvb, "notification: " .. st.err, 16)
        end
        return total
    end
    add_layout(tvb, 0, OUT_HEADER, root)
    local status = st.error == 0 and "success" or string.format("error: %d (%s)", st.error, errno_name(st.error))
    local of = st.req and (", reply to " .. opcode_name(st.req.opcode)) or ", no request"
    local info = string.format("unique: %s, %s, outsize: %d%s", st.unique, status, total, of)
    pinfo.cols.info = info
    root:append_text(", " .. info)
    if st.req then
        root:add(F["fuse.opcode"], tvb(0, 0), st.req.opcode):set_generated()
        root:add(F["fuse.request_in"], tvb(0, 0), st.req.frame):set_generated()
        if st.latency then root:add(F["fuse.latency"], tvb(0, 0), st.latency):set_generated() end
    end
    if st.ok then
        decode_reply(tvb, st, root)
    else
        show_problem(root, tvb, st.err, 16)
    end
    return total
end

DissectorTable.get("wtap_encap"):add(wtap.USER0, fuse)
