-- A HEP3 dissector for tshark builds without one (Debian 12's tshark 4.0 has
-- none), written from the HEP3 specification for otus-ebpf's tests:
--   tshark -X lua_script:tests/support/hep3.lua -d udp.port==PORT,hep3 ...
-- It decodes the generic chunks (vendor 0) and hands a SIP payload to
-- tshark's own SIP dissector and a JSON one to its JSON dissector.

local hep3 = Proto("hep3", "HEP3 (Homer Encapsulation Protocol v3)")

local f = {
    length = ProtoField.uint16("hep3.length", "Total length"),
    ip_family = ProtoField.uint8("hep3.ip_family", "IP family"),
    ip_proto = ProtoField.uint8("hep3.ip_proto", "IP protocol"),
    src_ip = ProtoField.ipv4("hep3.src_ip", "Source IPv4"),
    dst_ip = ProtoField.ipv4("hep3.dst_ip", "Destination IPv4"),
    src_ip6 = ProtoField.ipv6("hep3.src_ip6", "Source IPv6"),
    dst_ip6 = ProtoField.ipv6("hep3.dst_ip6", "Destination IPv6"),
    src_port = ProtoField.uint16("hep3.src_port", "Source port"),
    dst_port = ProtoField.uint16("hep3.dst_port", "Destination port"),
    ts_sec = ProtoField.uint32("hep3.ts_sec", "Seconds"),
    ts_usec = ProtoField.uint32("hep3.ts_usec", "Microseconds"),
    proto_type = ProtoField.uint8("hep3.proto_type", "Payload type"),
    capture_id = ProtoField.uint32("hep3.capture_id", "Capture agent id"),
    auth_key = ProtoField.string("hep3.auth_key", "Authentication key"),
    payload = ProtoField.bytes("hep3.payload", "Payload"),
    correlation_id = ProtoField.string("hep3.correlation_id", "Correlation id"),
    node_name = ProtoField.string("hep3.node_name", "Node name"),
    unknown = ProtoField.bytes("hep3.unknown", "Unknown chunk"),
}
hep3.fields = {}
for _, field in pairs(f) do
    table.insert(hep3.fields, field)
end

local by_type = {
    [0x0001] = f.ip_family, [0x0002] = f.ip_proto, [0x0003] = f.src_ip, [0x0004] = f.dst_ip,
    [0x0005] = f.src_ip6, [0x0006] = f.dst_ip6, [0x0007] = f.src_port, [0x0008] = f.dst_port,
    [0x0009] = f.ts_sec, [0x000a] = f.ts_usec, [0x000b] = f.proto_type, [0x000c] = f.capture_id,
    [0x000e] = f.auth_key, [0x000f] = f.payload, [0x0011] = f.correlation_id, [0x0013] = f.node_name,
}

function hep3.dissector(tvb, pinfo, tree)
    if tvb:len() < 6 or tvb(0, 4):string() ~= "HEP3" then
        return 0
    end
    local total = tvb(4, 2):uint()
    local subtree = tree:add(hep3, tvb(0, math.min(total, tvb:len())))
    subtree:add(f.length, tvb(4, 2))
    pinfo.cols.protocol = "HEP3"
    local offset, payload_type, payload = 6, nil, nil
    while offset + 6 <= total and offset + 6 <= tvb:len() do
        local kind = tvb(offset + 2, 2):uint()
        local length = tvb(offset + 4, 2):uint()
        if length < 6 or offset + length > tvb:len() then
            break
        end
        local value = tvb(offset + 6, length - 6)
        subtree:add(by_type[kind] or f.unknown, value)
        if kind == 0x000b then
            payload_type = value:uint()
        elseif kind == 0x000f then
            payload = value
        end
        offset = offset + length
    end
    if payload ~= nil then
        if payload_type == 1 then
            Dissector.get("sip"):call(payload:tvb(), pinfo, tree)
        elseif payload_type == 5 or payload_type == 34 then  -- RTCP and RTP-agent reports are JSON
            Dissector.get("json"):call(payload:tvb(), pinfo, tree)
        end
    end
    return offset
end

DissectorTable.get("udp.port"):add_for_decode_as(hep3)
DissectorTable.get("tcp.port"):add_for_decode_as(hep3)
