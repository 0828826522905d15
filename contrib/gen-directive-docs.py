#!/usr/bin/env python3
"""Generate html-docs/directives.html from `xrayd --list-directives`.

The directive tables in the C sources are the one source of truth for a
directive's name, contexts, type, default and one-line description; this
script renders them, adding the longer prose and examples kept in EXTRA
below.  The generated page is committed, and t/test_15_docs.py fails when
it differs from what this script produces, so the manual cannot drift from
the binary.

Usage:
    python3 contrib/gen-directive-docs.py [BINARY [OUTPUT]]
    python3 contrib/gen-directive-docs.py objs/xrayd > html-docs/directives.html
    python3 contrib/gen-directive-docs.py objs/xrayd html-docs/directives.html

BINARY defaults to objs/xrayd; OUTPUT defaults to standard output.
Only the Python standard library is used.
"""

import html
import os
import subprocess
import sys

# ---------------------------------------------------------------------------
# Longer text per directive.  Keys are the directive name for core
# directives and "MODULE/NAME" for a filter module's directives.  Each value
# may hold:
#   "syntax":  the value part of the syntax line, HTML (overrides the type)
#   "text":    paragraphs of HTML shown after the one-line description
#   "example": a YAML example, plain text (escaped here)
#   "required": True if the directive must be given (--list-directives
#               does not say so)
# The one-line description itself always comes from the binary.
# ---------------------------------------------------------------------------

EXTRA = {
    # ---- top level ------------------------------------------------------
    "workers": {
        "syntax": "<code>auto</code> | <i>number</i>",
        "text": """
<p>The number of worker processes. Each worker is one event loop that
accepts connections on every listening socket and relays them; the master
process itself relays nothing. <code>auto</code> starts one worker per
online CPU (at most 64), which is right for most machines; a number may be
1 to 512.</p>
<p>A change takes effect on reload: the new generation of workers is started
with the new count and the old workers drain (see
<a href="process.html#reload">reload</a>).</p>""",
        "example": "workers: 2",
    },
    "daemon": {
        "text": """
<p>With <code>off</code> (the default) xrayd stays in the foreground, which
is what systemd (<code>Type=simple</code>), containers and the test suite
want. With <code>on</code> the master detaches from the terminal and runs in
the background; use <a href="#d-pid">pid</a> and
<code>xrayd -s</code> to signal it afterwards.</p>""",
        "example": "daemon: on\npid: /run/xrayd.pid",
    },
    "pid": {
        "text": """
<p>The file the master writes its process id to at start-up and removes when
it exits. The default, <code>/run/xrayd.pid</code>, needs root; the shipped
<code>conf/xrayd.yaml</code> uses <code>/tmp/xrayd.pid</code> so it runs
as any user. <code>xrayd -s reload|stop|quit|reopen|upgrade -c FILE</code> reads the
pid from the <code>pid</code> file named in <code>FILE</code>, so the same
configuration file must be given to <code>-s</code> as to the running
daemon. A relative path is resolved against the directory of the YAML file
that contains it.</p>""",
        "example": "pid: /run/xrayd.pid",
    },
    "error_log": {
        "syntax": "<code>stderr</code> | <i>path</i>",
        "text": """
<p>Where the error log goes: <code>stderr</code>, or a file that is opened
for appending (and created with mode 0644 if needed). The format of its lines
is described in <a href="logging.html#error-log">Logging</a>. After a log
rotation, send <code>SIGUSR1</code> (or run <code>xrayd -s reopen</code>) so
every process reopens the file.</p>""",
        "example": "error_log: /var/log/xrayd/error.log",
    },
    "log_level": {
        "text": """
<p>The least severe level written to the error log; every more severe level
is written too. <code>debug</code> lines exist only in a binary configured
with <code>./configure --with-debug</code>; in other builds that level
behaves as <code>info</code> plus nothing.</p>""",
        "example": "log_level: notice",
    },
    "drain_timeout": {
        "text": """
<p>After a reload or a graceful stop (<code>SIGQUIT</code>), the old worker
processes stop accepting new connections but keep relaying the ones they
have. <code>drain_timeout</code> bounds how long they may do so: when it
expires, the connections still open are closed (their access-log
<code>reason</code> is <code>"worker shutdown"</code>) and the old workers
exit. <code>0</code> closes them at once; the longest is <code>1d</code>.
The value of the configuration the retiring workers run with applies.</p>""",
        "example": "drain_timeout: 30s",
    },
    "load_module": {
        "syntax": "<i>path</i> | <code>[</code><i>path</i>, ...<code>]</code>",
        "text": """
<p>Loads filter modules built as shared objects (see
<a href="modules.html">Modules</a>). A loaded module's name can then be used
in a relay block's <a href="#d-filters">filters</a>. The loader checks the
module's ABI version and build signature and refuses a module built for
another xrayd, naming the file and both versions; the error is reported at
this directive's position, and <code>xrayd -t</code> reports it too.</p>
<p>The built-in modules (<code>log</code>, <code>signature</code>) need no
<code>load_module</code>; a loaded module with the same name as a built-in
one replaces it. Loading two modules with the same name is an error. Modules
are loaded before any relay block is read, wherever
<code>load_module</code> stands in the file. A relative path is resolved
against the directory of the YAML file that contains it.</p>""",
        "example": "load_module:\n  - /usr/local/lib/xrayd/modules/mymod.so",
    },
    "include": {
        "syntax": "<i>path</i> | <code>[</code><i>path</i>, ...<code>]</code>",
        "text": """
<p>Merges other YAML files into this one. Each included file must be a
top-level mapping; its directives are merged into the top level, and the
entries of its <a href="#d-relay">relay</a> list are appended to the
relay blocks already declared. Other directives may be set only once in
all the files together: a second <code>buffer_size</code> in an included
file is a <code>duplicate directive</code> error that names the first
one's position. (<code>include</code>, <code>load_module</code> and
<code>relay</code> may repeat.)</p>
<p>A path may be a glob (<code>conf.d/*.yaml</code>, matched in sorted
order); a glob that matches nothing is fine, a plain path that does not
exist is an error. A relative path is resolved against the directory of the
file that holds the <code>include</code>. Included files may include
others, up to 8 levels deep. Errors in an included file are reported with
that file's name, line and column.</p>""",
        "example": "include: conf.d/*.yaml",
    },
    "agent": {
        "syntax": "<code>agent:</code> <i>agent block</i>",
        "text": """
<p>Runs the XRAY agent: the service that applications' libraries and
other agents reach over mutually authenticated TLS, speaking
<a href="protocol.html">the XRAY protocol</a>. One worker process serves
it (its log line says "serving the agent"); if that worker dies, its
replacement takes over and reloads the leases from
<a href="#d-agent-state_file">state_file</a>.</p>
<p>Server binding (XRAY &sect;5.1): a library registers a server socket
at its own address (or one its application's
<a href="#d-application-servers">servers</a> rules allow) with REGISTER
and receives its official address - the local address when
it is public, else an address and port leased from
<a href="#d-agent-official_pool">official_pool</a> when the local address
lies in one of <a href="#d-agent-networks">networks</a>. Leases last
<a href="#d-agent-lease_time">lease_time</a> unless refreshed (the agent
tells libraries to send a heartbeat every third of it).</p>
<p>Connection setup (XRAY &sect;5.2): a library's CONNECT is checked
against its application's outbound rules; a destination registered with
this agent is answered with the server's local address (no relay);
otherwise the agent of the destination's network
(<a href="#d-agent-peers">peers</a>) is asked with PEER_CONNECT, both
agents create relay points bound to a random token and to the certificate
expected on each side, the three overlay links come up in parallel, and
the libraries exchange the end-to-end ACK through them. Each relay point
then runs as a relay with the application's filters (the server
application's at the server's agent, the client application's at the
client's), decrypting and re-encrypting on every hop. A relay point not
linked on both sides within twice
<a href="#d-agent-handshake_timeout">handshake_timeout</a> expires. The
server's agent reaches the server as <a href="#d-agent-incoming">incoming</a>
says: by default it dials the server's local address (INCOMING mode 1) and,
when that fails, has the server's library connect out to the relay point
(mode 2, the GCB technique). The client's agent keeps one standing TLS
session to each peer agent and sends every PEER_CONNECT on it, so a new
connection costs the agents no handshake of their own but its link (and
that one resumes).</p>
<p>Who may do what is the <a href="#d-applications">applications</a>
policy: a library whose certificate no application matches is refused at
once, with the reason in the log.</p>""",
        "example": (
            "agent:\n"
            "  listen: 198.19.0.2:7000\n"
            "  tls:\n"
            "    certificate: /etc/xrayd/agent.crt\n"
            "    key: /etc/xrayd/agent.key\n"
            "    client_ca: /etc/xrayd/ca.crt\n"
            "  networks: [198.18.2.0/24]\n"
            "  official_pool: [\"198.19.0.2:20000-20999\"]\n"
            "  state_file: /var/lib/xrayd/agent.state"),
    },
    "proxy": {
        "syntax": "<code>[</code> <i>proxy block</i>, ... <code>]</code>",
        "text": """
<p>Transparent proxies (see <a href="proxy.html">Proxies</a>): each entry
listens where the router's REDIRECT (or TPROXY) rules send connections and
relays every one to its original destination, read from the socket, or
through the <a href="#d-proxy-upstream">parent proxies</a> first. An entry
takes the directives of <a href="#relayproxy">relay and proxy blocks</a>
(listen, name, buffer_size, timeouts, max_connections, filters) and those
of <a href="#b-proxy">proxy blocks</a>; <code>upstream</code> is optional
here.</p>""",
        "example": (
            "proxy:\n"
            "  - name: web\n"
            "    listen: 0.0.0.0:3128\n"
            "    mode: http\n"
            "    http:\n"
            "      hosts_deny: [\"*.ads.example\"]\n"
            "  - name: tcp\n"
            "    listen: 0.0.0.0:3129"),
    },
    "state_dir": {
        "text": """
<p>Each worker that serves blocks with continuity (proxy blocks'
<a href="#d-proxy-continuity">continuity</a>, relay blocks'
<a href="#d-continuity">continuity</a>) keeps their live connections in
a file here (<code>conn-PID.snap</code>, mode 0600): the state a
replacement needs to carry them on after a crash or an upgrade. The file is
sparse and mapped shared; it should be on tmpfs (<code>/run</code> usually
is), since a disk would only be written to for nothing. The directory must
exist and be writable by the workers: <code>xrayd -t</code>, start-up and a
reload refuse a configuration with a block with continuity when it is
not.</p>""",
        "example": "state_dir: /run/xrayd",
    },
    "admin_socket": {
        "text": """
<p>The master answers <code>xray status</code> here: version and pid (and
the pid it was upgraded from), workers, and per relay or proxy block its
live connections, connections accepted, connections taken over after a
crash or an upgrade, and bytes read from the clients and from the
upstreams (live connections included, as they move). When every worker
keeps exiting during start-up it says so (<code>workers_failing</code>,
with how many in a row and how the last one ended), as the error log does
at <code>alert</code>. The agent has a
<a href="#d-agent-admin_socket">socket of its own</a>.</p>""",
        "example": "admin_socket: /run/xrayd.sock",
    },
    "proxy/mode": {
        "text": """
<p><code>circuit</code> passes bytes as they are, whatever the protocol.
<code>http</code> parses every request and response (http-parser), checks
requests against the block's <a href="#d-proxy-http">http</a> rules,
answers refusals with an error page in their turn, adds Via, removes
hop-by-hop headers and logs each request (see
<a href="proxy.html#http">HTTP</a>).</p>""",
    },
    "proxy/intercept": {
        "text": """
<p><code>redirect</code>: iptables/nftables REDIRECT rewrote the
destination; xrayd reads the original one with SO_ORIGINAL_DST (IPv4) or
IP6T_SO_ORIGINAL_DST (IPv6). <code>tproxy</code>: TPROXY delivered the
connection unchanged; the listener is IP_TRANSPARENT (CAP_NET_ADMIN) and
the original destination is the local address. Either way a connection to
the proxy's own address is closed, not looped.</p>""",
    },
    "proxy/upstream": {
        "text": """
<p>Parent proxies tried in order before the original destination, which is
used when none of them can be connected to within
<a href="#d-connect_timeout">connect_timeout</a>. In
<code>mode: http</code> requests to a parent are sent in the absolute
form.</p>""",
        "example": "upstream: [10.0.0.8:3128, 10.0.0.9:3128]",
    },
    "continuity": {
        "text": """
<p>A relay block's connections survive a worker's crash (even SIGKILL), a
reload and a binary upgrade, as a proxy block's do (see
<a href="#d-proxy-continuity">the proxy's continuity</a>): they run on the
engine's rings in the worker's snapshot in
<a href="#d-state_dir">state_dir</a>, and the master holds a duplicate of
each socket. Plain TCP blocks only: <code>xrayd -t</code> refuses it on a
block with <a href="#d-tls">tls</a> or <a href="#d-upstream_tls">upstream_tls</a>,
whose record layer is not in the snapshot yet. Off by default: it costs two
descriptor passes to the master per connection and the snapshot's
memory.</p>""",
        "example": "continuity: on",
    },
    "proxy/continuity": {
        "text": """
<p>A worker's proxied connections survive its crash (even SIGKILL), a
reload and a binary upgrade: the master holds a duplicate of each socket
and the worker's snapshot in <a href="#d-state_dir">state_dir</a> says
where every byte is (see <a href="proxy.html#continuity">Continuity</a>).
It costs two descriptor passes to the master per connection; with it off a
crash ends the worker's connections.</p>""",
    },
    "proxy/http": {
        "syntax": "<code>{</code> <i>rules</i> <code>}</code>",
        "text": """
<p>The rules of a <code>mode: http</code> block, in <a href="#b-http">a
mapping of their own</a>. Without it a http block uses the defaults: the
common methods, every host.</p>""",
        "example": (
            "http:\n"
            "  methods: [GET, HEAD, POST]\n"
            "  hosts_allow: [\"*.example.com\"]\n"
            "  deny_headers: [X-Forwarded-Host]"),
    },
    "applications": {
        "syntax": "<code>[</code> <i>application</i>, ... <code>]</code>",
        "text": """
<p>The agent's policy, closed by default. Each entry names an application,
says which certificates are it (<a href="#d-application-match">match</a>:
the same patterns as a listener's <a href="#d-tls-allow">allow</a>), and
what it may do: register servers
(<a href="#d-application-inbound">inbound</a>) at which local addresses
(<a href="#d-application-servers">servers</a>), connect where
(<a href="#d-application-outbound">outbound</a>), with which filter chain
its relay points run, within which limits. The first entry whose patterns
match a certificate is the application. Every refusal is logged with the
application and the rule (or the missing one).</p>""",
        "example": (
            "applications:\n"
            "  - name: web\n"
            "    match: [\"CN=web-*\"]\n"
            "    inbound: on\n"
            "    filters: [signature: {patterns: [\"/etc/passwd\"]}]\n"
            "  - name: backup-client\n"
            "    match: [\"sha256:3f2a9c0e1b7d4a55\"]\n"
            "    outbound: [\"198.18.2.0/24:873\"]"),
    },
    "application/outbound": {
        "text": """
<p>Each rule is <code>ADDR[/PREFIX][:PORTS]</code>: an IPv4 address or
network, or an IPv6 one in brackets (<code>[2001:db8::]/32:443</code>), or
<code>*</code> for every address; PORTS is one port, <code>LO-HI</code>,
or <code>*</code> (the default). A network with host bits set below its
prefix is refused as a likely typo. No rule means no outbound
connections.</p>
<p>Loopback, unspecified (0.0.0.0/8, ::), link-local, multicast and
broadcast destinations, and the agent's own addresses, are refused even
when a wide rule such as <code>*:443</code> covers them: a rule must name
them, that is lie inside them (<code>127.0.0.1:9000</code>,
<code>198.19.0.2/32:22</code>). A relay that reaches its own host's
loopback is how a TURN server was turned into a proxy into its own network
(CVE-2020-26262). IPv4-mapped IPv6 addresses are judged as the IPv4
address they carry.</p>""",
    },
    "application/servers": {
        "text": """
<p>The agent dials a server's registered local address for relayed
connections (<a href="#d-agent-incoming">incoming</a>), so it does not take
that address on trust: a REGISTER may name the address the library's
control connection comes from (any port), or an address these rules allow.
They are written as <a href="#d-application-outbound">outbound</a> rules
are, <code>ADDR[/PREFIX][:PORTS]</code>. Without them an application
registers only its own address; a server host behind another NAT than the
agent, or an application registering for several hosts, needs one. Any
other address is refused with NOT_AUTHORIZED, and logged.</p>
<p>As for outbound, loopback, unspecified, link-local, multicast and
broadcast addresses and the agent's own addresses are refused - even when
they are the address the library connects from, as for a server on the
agent's host - unless a rule names them (<code>127.0.0.1:9000</code>).</p>""",
        "example": (
            "applications:\n"
            "  - name: web-farm\n"
            "    match: [\"CN=web-*\"]\n"
            "    inbound: on\n"
            "    servers: [\"10.2.4.0/24:8000-8099\"]"),
    },
    "agent/idle_session_timeout": {
        "text": """
<p>A library's control session that holds no registration and waits on no
answer (a CONNECT, an INCOMING) is closed when it has sent no request for
this long: the agent sends ERROR TIMEOUT with id 0 and the reason, logs
it, and closes. A session with a registration stays open without requests,
as long as the registration lives (its heartbeats keep it). Other agents'
sessions are not affected: they are the standing sessions for
PEER_CONNECT.</p>""",
        "example": "agent:\n  idle_session_timeout: 5m",
    },
    "agent/incoming": {
        "syntax": "<code>auto</code> | <code>inbound</code> | <code>connect_out</code>",
        "text": """
<p>How this agent reaches a server for a relayed connection (XRAY &sect;5.2
step 6). <code>inbound</code>: it tells the server's library (INCOMING mode
1), then dials the server's registered local address from the address the
library reaches the agent at, presents the agent's certificate, checks that
the server presents the certificate that registered, and sends LINK; a
failure fails the connection. <code>connect_out</code>: the library connects
out to the relay point (mode 2, the GCB technique), for an agent that sits
outside the server's network and cannot dial it. <code>auto</code> (the
default) dials, and falls back to mode 2 when the server's address does not
answer within 1 s, or when the server refuses the link or does not finish its
TLS within <code>handshake_timeout</code> (a burst of connections costs a
server many handshakes at once: a busy server is not an unreachable one). <code>xray status</code> counts both
ways (<code>servers_dialed</code>, <code>servers_connected_out</code>).</p>""",
        "example": "agent:\n  incoming: connect_out",
    },
    "agent/admin_socket": {
        "text": """
<p>A UNIX socket, created mode 0600, on which the agent answers
<code>xray status</code>:</p>
<pre><code>xray status --socket /run/xrayd-agent.sock          # text
xray status --socket /run/xrayd-agent.sock --json   # one JSON object
XRAY_ADMIN_SOCKET=/run/xrayd-agent.sock xray status</code></pre>
<p>It shows the registrations (official and local address, protocol,
application, whether the holder is connected or the address is reserved
for it, time to expiry), the official pool's use, control sessions, TLS
handshakes (full and resumed) and counters (registered, refreshed,
unregistered, expired, refused, protocol errors). A reload's new agent
takes the path over. Without this directive there is no socket.</p>""",
    },
    "agent/state_file": {
        "text": """
<p>The agent writes its leases here (a text file, mode 0600, replaced
atomically; a failed write, such as a full disk, keeps the previous file
and is logged and retried every second). After a restart or a crash of
its worker, every lease that has not run out stays reserved for its holder,
recognised by its public key: another server asking for an address gets a
different one, and the holder, registering again with its old address as
<code>prior</code>, gets it back.</p>""",
    },
    "relay": {
        "syntax": "<code>[</code> <i>relay block</i>, ... <code>]</code>",
        "text": """
<p>The list of relay blocks. Each block is a mapping that accepts the
directives whose context includes <code>relay</code>: at least
<a href="#d-listen">listen</a> and <a href="#d-upstream">upstream</a>, and
optionally a <a href="#d-name">name</a>, balancing and failure settings,
a <a href="#d-filters">filter chain</a>, and any of the inheritable
directives, which override the top-level value for this block only.</p>
<p>Every connection accepted on one of the block's listen addresses is
relayed to one of its upstream servers: bytes from the client go
<em>up</em>, bytes from the upstream go <em>down</em>, each direction
through the block's filter chain. Half-close is honoured: when one side
finishes sending (FIN), the other side's write half is shut down once
everything before it has been delivered, and the relay ends when both
directions have ended.</p>""",
        "example": (
            "relay:\n"
            "  - name: web\n"
            "    listen: 127.0.0.1:8080\n"
            "    upstream: [10.0.0.1:80, 10.0.0.2:80]\n"
            "    balance: least_conn\n"
            "    filters:\n"
            "      - log: {path: /var/log/xrayd/web.log}"),
    },

    # ---- inheritable (top level and relay blocks) ------------------------
    "buffer_size": {
        "text": """
<p>The size of the buffer for each direction of a relayed connection. When
the receiving side is slower than the sending side and the buffer is full,
xrayd stops reading from the sender until the buffer drains
(backpressure), so a connection never uses more than this per direction
for data in flight. Larger buffers help throughput on long fat links; smaller
ones lower memory per busy connection. An idle connection holds no buffer
at all: a direction takes one from a pool when bytes arrive and gives it
back once they are delivered. From <code>1k</code> to <code>16m</code>.</p>
<p>A filter that holds bytes (see <a href="modules.html#chain">the filter
chain</a>) holds them in this space, too.</p>""",
        "example": "buffer_size: 256k",
    },
    "connect_timeout": {
        "text": """
<p>How long to wait for a TCP connection to an upstream server to be
established (at most <code>1h</code>). When it expires, the attempt counts as a failure of that
server (see <a href="#d-upstream_max_fails">upstream_max_fails</a>) and the
next server is tried, as far as <a href="#d-upstream_tries">upstream_tries</a>
allows; when no attempt succeeds the client connection is closed with the
reason <code>"upstream connect failed"</code>.</p>""",
        "example": "connect_timeout: 2s",
    },
    "idle_timeout": {
        "text": """
<p>A relayed connection on which no byte is read or written, in either
direction, for this long is closed, with the reason
<code>"idle timeout"</code> (at most <code>7d</code>). The clock starts once the upstream connection
is established; before that, <a href="#d-connect_timeout">connect_timeout</a>
applies.</p>""",
        "example": "idle_timeout: 1h",
    },
    "max_connections": {
        "text": """
<p>The greatest number of connections a relay block relays at once, counted
across all worker processes (1 to 1000000). While a block is at its limit, its workers
stop accepting, so further connections wait in the kernel's listen queue
(see <a href="#d-backlog">backlog</a>) until a relay ends; none is accepted
and then dropped. Set at the top level, it is inherited by every relay block
as that block's own limit (it is not one limit shared by all blocks).</p>""",
        "example": "max_connections: 1000",
    },
    "tcp_nodelay": {
        "text": """
<p>Sets <code>TCP_NODELAY</code> on both the client and the upstream
connection, so small writes go out at once instead of waiting for Nagle's
algorithm. Leave it on for interactive protocols; turning it off may save
packets for bulk transfers of small writes.</p>""",
        "example": "tcp_nodelay: off",
    },

    # ---- relay block ---------------------------------------------------
    "name": {
        "text": """
<p>The relay block's name. It appears in the error log
(<code>relay: NAME</code>), in the access log's <code>listener</code> field,
and is handed to filter modules as <code>s-&gt;listener</code>. Without it,
a block is named after its first <a href="#d-listen">listen</a> address.
Two blocks with the same name are an error.</p>""",
        "example": "name: web",
    },
    "listen": {
        "required": True,
        "syntax": "<i>address</i> | <code>[</code><i>address</i>, ...<code>]</code>",
        "text": """
<p>The addresses to accept connections on, each written
<code>HOST:PORT</code>: <code>127.0.0.1:8080</code>,
<code>"[::1]:8080"</code> (quote it: YAML would read an unquoted
<code>[</code> as the start of a list) or <code>*:8080</code> for every
IPv4 address. A host name is resolved once, when the configuration is
loaded. The master opens the listening sockets; every worker accepts on
them. The same address in two places (or a wildcard and a specific
address on the same port) is an error that names both positions.</p>""",
        "example": "listen:\n  - 127.0.0.1:8080\n  - \"[::1]:8080\"",
    },
    "upstream": {
        "required": True,
        "syntax": "<i>address</i> | <code>[</code><i>address</i>, ...<code>]</code>",
        "text": """
<p>The servers connections are relayed to, each written
<code>HOST:PORT</code> as for <a href="#d-listen">listen</a>. With more
than one server, <a href="#d-balance">balance</a> picks the server for each
connection.</p>""",
        "example": "upstream:\n  - 10.0.0.1:443\n  - 10.0.0.2:443",
    },
    "balance": {
        "text": """
<p>How a server is chosen from <a href="#d-upstream">upstream</a> for a new
connection:</p>
<ul>
<li><code>round_robin</code>: each server in turn (each worker keeps its own
turn, and the workers start at different servers);</li>
<li><code>least_conn</code>: the server with the fewest active connections
of this worker;</li>
<li><code>random</code>: a server chosen at random;</li>
<li><code>source_hash</code>: a server chosen by a hash of the client's IP
address (not its port), so one client keeps reaching the same server while
the set of servers and their health are unchanged.</li>
</ul>
<p>Servers marked down (see
<a href="#d-upstream_max_fails">upstream_max_fails</a>) are skipped: the
next server in the same order is taken. When every server not yet tried for
this connection is marked down, one of them is tried anyway rather than
failing the client.</p>""",
        "example": "balance: source_hash",
    },
    "upstream_tries": {
        "text": """
<p>How many servers to try for one connection before giving up. When a
connection to a server cannot be established (refused, unreachable, or
<a href="#d-connect_timeout">connect_timeout</a>), the next server is tried,
as <a href="#d-balance">balance</a> picks it among the servers not yet tried
for this connection. <code>0</code> means each server once; a number larger
than the number of servers (up to 100) goes round them again. Each failure is logged
(<code>[error] connect() to upstream ... failed</code> or <code>[warn]
upstream ... timed out</code>); when the tries are used up, the client
connection is closed with the reason <code>"upstream connect failed"</code>.
Only connection establishment is retried: once connected, a failure of the
upstream ends the client connection.</p>""",
        "example": "upstream_tries: 2",
    },
    "upstream_max_fails": {
        "text": """
<p>The number of consecutive failed connection attempts to one server (1 to
1000) after which that server is marked down for
<a href="#d-upstream_fail_timeout">upstream_fail_timeout</a>: new
connections skip it (see <a href="#d-balance">balance</a>) until the time
is up. A successful connection resets the count. This is passive health
checking, kept by each worker for itself: one worker may have marked a server
down while another has not yet. While every server is down, connections
are still attempted rather than refused.</p>""",
        "example": "upstream_max_fails: 3\nupstream_fail_timeout: 30s",
    },
    "upstream_fail_timeout": {
        "text": """
<p>How long a server is skipped once it has failed
<a href="#d-upstream_max_fails">upstream_max_fails</a> connection attempts in
a row. <code>0</code> never marks a server down.</p>""",
        "example": "upstream_fail_timeout: 30s",
    },
    "backlog": {
        "text": """
<p>The <code>backlog</code> argument of <code>listen(2)</code> for the relay
block's listening sockets: how many fully established connections the
kernel queues before a worker accepts them (1 to 65535; the kernel caps it
at <code>net.core.somaxconn</code>). Connections held back by
<a href="#d-max_connections">max_connections</a> wait here. A changed
value is applied to an existing socket on reload.</p>""",
        "example": "backlog: 4096",
    },
    "tls": {
        "text": """
<p>Makes the block's listeners speak TLS 1.2. mbedTLS performs the handshake
(ECDHE with ECDSA or RSA certificates) and X.509 verification; once it is
done, xrayd frees the mbedTLS context and seals and opens application data
itself (AES-256-GCM, RFC 5288, or ChaCha20-Poly1305, RFC 7905), so an idle
TLS connection costs about what a plain one does. AES-256-GCM runs on
xrayd's own VAES/VPCLMULQDQ code where the CPU has those instructions, on
512-bit registers with AVX-512 (<code>vaes-avx512</code>) or on 256-bit
ones with AVX2 (<code>vaes-avx2</code>, e.g. AMD Zen 3), else on libsodium
(<code>xrayd -V</code> says which); ChaCha20-Poly1305 is libsodium's.
Setting the environment variable <code>XRAYD_AES=sodium</code> forces
libsodium; <code>XRAYD_AES=avx2</code> forces the 256-bit code on an
AVX-512 machine, for testing. Suites the record layer does not implement
stay on mbedTLS's records.</p>
<p>With <a href="#d-tls-client_ca">client_ca</a> the client must present a
certificate that chains to it, is within its validity and carries the
digitalSignature key usage and the clientAuth extended key usage;
<a href="#d-tls-allow">allow</a> then narrows who may connect. Refusals are
logged with the reason (expired, other CA, not in allow, not TLS ...). The
peer's identity appears in the error log and in the access log's
<code>identity</code> field. The handshake must finish within
<a href="#d-connect_timeout">connect_timeout</a>. Renegotiation is refused;
close_notify is sent and answered; a connection that ends without one is
logged as such.</p>""",
        "example": "tls:\n  certificate: pki/front.crt\n  key: pki/front.key\n  client_ca: pki/ca.crt\n  allow: [\"CN=app-*\", \"sha256:3f1a9c0e2b7d4e55\"]",
    },
    "upstream_tls": {
        "text": """
<p>Makes connections to the upstream servers TLS 1.2, with the same split as
<a href="#d-tls">tls</a>: mbedTLS for the handshake, xrayd's record layer for
the bytes. The upstream's certificate is verified against
<a href="#d-upstream_tls-ca">ca</a> (and its name against
<a href="#d-upstream_tls-server_name">server_name</a>, also sent as SNI);
a client certificate is presented when one is configured. Each worker keeps
the last session per upstream block and offers it on the next connection,
so repeat connections resume without public-key operations.</p>""",
        "example": "upstream_tls:\n  ca: pki/ca.crt\n  server_name: backend.internal\n  certificate: pki/relay.crt\n  key: pki/relay.key",
    },
    "tls/allow": {
        "text": """
<p>Each entry is a pattern with shell wildcards (<code>*</code>,
<code>?</code>, <code>[...]</code>). A client is let in when any entry
matches its certificate's whole subject (<code>CN=app1,O=Acme</code>, most
specific part first, as <code>xray pki show</code> prints it), one part of
it (<code>CN=app-*</code>, <code>O=Acme</code>), one subjectAltName
(<code>DNS:*.internal</code>, <code>IP:198.18.0.5</code>) or, written
<code>sha256:HEX</code> with at least 16 hex digits, the SHA-256 of its
public key (<code>xray pki show</code> prints it). Only verified
certificates are matched; an empty list lets every verified client in.</p>""",
    },
    "tls/verify_client": {
        "text": """
<p><code>required</code> (the default when <a href="#d-tls-client_ca">client_ca</a>
is set) refuses clients without a valid certificate; <code>optional</code>
lets them in, unauthenticated, but a presented certificate must still be
valid to count as an identity; <code>off</code> (the default without
client_ca) asks for none.</p>""",
    },
    "tls/session_tickets": {
        "text": """
<p>Tickets are sealed (XChaCha20-Poly1305) with a key per period of
<a href="#d-tls-session_timeout">session_timeout</a>, derived from a secret
the master draws at start and keeps in memory only. Every worker, and every
worker started by a reload, derives the same key for the same period, so a
ticket resumes on whichever worker the client reaches; a ticket opens in
its own period and the next, and never later than session_timeout after
the session began. Each key also covers the listener's certificate, CAs,
<a href="#d-tls-verify_client">verify_client</a> and
<a href="#d-tls-allow">allow</a>: a ticket does not resume on a listener
that trusts differently, nor after a reload that changed those. A restart
draws a new secret, so outstanding tickets then cost one full handshake.
The session cache
(<a href="#d-tls-session_cache">session_cache</a>) is shared by all workers
too, so a client resumes by session id whichever worker it reaches.</p>""",
    },
    "filters": {
        "syntax": ("<code>[</code> <i>name</i> | <code>{</code><i>name</i>: "
                   "<code>{</code><i>directives</i><code>}}</code>, ... <code>]</code>"),
        "text": """
<p>The relay block's filter chain: an ordered list of filter modules, each
either a bare name or a one-key mapping from the name to the module's
directives. In both directions the bytes pass the filters in the order
listed (see <a href="modules.html#chain">the filter chain</a>). The same
module may appear in the chains of several blocks, each with its own
directives; its directives are listed below under its name.</p>""",
        "example": (
            "filters:\n"
            "  - signature:\n"
            "      patterns: [\"/etc/passwd\"]\n"
            "  - log:\n"
            "      path: /var/log/xrayd/access.log"),
    },

    # ---- module log ----------------------------------------------------
    "log/path": {
        "required": True,
        "text": """
<p>The access log: one JSON object per line for every finished relay, with
its addresses, byte counts, duration and the reason it ended (the fields are
described in <a href="logging.html#access-log">Logging</a>). The file is
created with mode 0640 if needed and opened for appending when the
configuration is loaded, so an unwritable path is a configuration error;
send <code>SIGUSR1</code> to reopen it after rotation. A relative path is
resolved against the directory of the YAML file. This directive is
required.</p>""",
        "example": "filters:\n  - log:\n      path: /var/log/xrayd/access.log",
    },

    # ---- module signature ------------------------------------------------
    "signature/patterns": {
        "required": True,
        "syntax": ("<code>[</code> <i>string</i> | <code>{hex: </code><i>hex</i><code>}</code> | "
                   "<code>{literal: </code><i>string</i><code>, name: </code><i>label</i>"
                   "<code>}</code>, ... <code>]</code>"),
        "text": """
<p>Byte patterns that must not cross the relay: a non-empty list. An item is
a literal string, a mapping <code>{hex: "de ad be ef"}</code> (hex digits;
spaces and colons between them are ignored), or
<code>{literal: "...", name: "label"}</code>; <code>name</code> may be given
with <code>hex</code> too, and an item has exactly one of <code>hex</code>
and <code>literal</code>. A pattern is 1 to 1024 bytes long.</p>
<p>A pattern is found even when it is split across several reads: the filter
remembers the last bytes of each direction (one less than the longest
pattern). When a pattern is seen, the relay is closed, the chunk that
completes the pattern is not forwarded, and the error log gets a
<code>[warn]</code> line <code>signature "LABEL" matched in the
client-to-upstream direction</code> (or upstream-to-client), where LABEL is
the <code>name</code>, else the literal, else <code>hex:</code> followed by
the hex text as written. The access log's <code>reason</code> is
<code>signature "LABEL" matched</code>, with LABEL cut to 60 bytes.</p>""",
        "example": (
            "filters:\n"
            "  - signature:\n"
            "      patterns:\n"
            "        - \"/etc/passwd\"\n"
            "        - {hex: \"90 90 90 90 90 90 90 90\", name: nop-sled}\n"
            "      direction: up"),
    },
    "signature/direction": {
        "text": """
<p><code>up</code> is client to upstream, <code>down</code> upstream to
client. A direction that is not inspected costs nothing: its bytes pass the
filter untouched.</p>""",
        "example": "direction: up",
    },
}

# How each type reported by --list-directives is written in a syntax line.
TYPE_SYNTAX = {
    "flag": "<code>on</code> | <code>off</code>",
    "number": "<i>number</i>",
    "size": "<i>size</i>",
    "duration": "<i>time</i>",
    "string": "<i>string</i>",
    "path": "<i>path</i>",
    "enum": "<i>name</i>",
    "address": "<i>address</i>",
    "addresses": "<i>address</i> | <code>[</code><i>address</i>, ...<code>]</code>",
    "strings": "<i>string</i> | <code>[</code><i>string</i>, ...<code>]</code>",
    "paths": "<i>path</i> | <code>[</code><i>path</i>, ...<code>]</code>",
    "block": "<i>value</i>",
}

NAV = [
    ("index.html", "xrayd"),
    ("getting-started.html", "Getting started"),
    ("directives.html", "Directives"),
    ("modules.html", "Modules"),
    ("process.html", "Processes &amp; signals"),
    ("logging.html", "Logging"),
    ("pki.html", "Certificates"),
    ("agent.html", "Agent"),
    ("library.html", "Library"),
    ("openings.html", "Openings"),
    ("proxy.html", "Proxies"),
    ("protocol.html", "Protocol"),
]

CORE_GROUPS = [
    ("main", "Top level", frozenset(["main"]),
     "These appear only at the top level of the configuration file."),
    ("inherited", "Top level, relay and proxy blocks", frozenset(["main", "relay", "proxy"]),
     "Set at the top level, these are the defaults of every relay and proxy block; a "
     "block may set its own value, which applies to that block only."),
    ("inherited-relay", "Top level and relay blocks", frozenset(["main", "relay"]),
     "Set at the top level, these are the defaults of every relay block; a "
     "relay block may set its own value, which applies to that block only."),
    ("relayproxy", "Relay and proxy blocks", frozenset(["relay", "proxy"]),
     "These appear inside an entry of the <a href=\"#d-relay\">relay</a> or the "
     "<a href=\"#d-proxy\">proxy</a> list."),
    ("relay", "Relay blocks", frozenset(["relay"]),
     "These appear inside an entry of the <a href=\"#d-relay\">relay</a> list."),
]

esc = html.escape


# Nested blocks of a relay, listed like modules (anchor d-BLOCK-NAME).
BLOCKS = {
    "tls": ("TLS on the listen side",
            "Directives of a relay block's <a href=\"#d-tls\">tls</a> mapping: the "
            "listeners accept TLS 1.2 with these settings."),
    "upstream_tls": ("TLS to the upstream",
                     "Directives of a relay block's <a href=\"#d-upstream_tls\">"
                     "upstream_tls</a> mapping: xrayd speaks TLS 1.2 to the upstream "
                     "servers with these settings."),
    "agent": ("The XRAY agent",
              "Directives of the top-level <a href=\"#d-agent\">agent</a> mapping: "
              "where libraries reach the agent, its TLS, the private networks it serves "
              "and the official addresses it leases (see <a href=\"protocol.html\">the "
              "protocol</a>)."),
    "peer": ("Peer agents",
             "Directives of each entry of the agent's <a href=\"#d-agent-peers\">peers</a> "
             "list: another agent, the official networks it serves, how to reach it and "
             "how to recognise it."),
    "proxy": ("Proxy blocks",
              "Directives only an entry of the <a href=\"#d-proxy\">proxy</a> list takes "
              "(it also takes those of <a href=\"#relayproxy\">relay and proxy blocks</a>): "
              "a transparent proxy to each connection's original destination."),
    "http": ("A proxy's HTTP rules",
             "Directives of a proxy block's <a href=\"#d-proxy-http\">http</a> mapping "
             "(<code>mode: http</code>): what requests may do."),
    "firewall": ("The firewall",
                 "Directives of the top-level <a href=\"#d-firewall\">firewall</a> mapping: "
                 "the nftables table in which the agent opens the firewall of this host for "
                 "the connections of applications with <code>traversal: open</code> (see "
                 "<a href=\"openings.html\">Openings</a>)."),
    "application": ("Applications",
                    "Directives of each entry of the top-level "
                    "<a href=\"#d-applications\">applications</a> list: the agent's "
                    "policy. An identity no entry matches may do nothing; an entry may do "
                    "only what it says."),
}


class Directive:
    def __init__(self, name, contexts, dtype, default, doc, module=None):
        self.name = name
        self.contexts = contexts
        self.type = dtype
        self.default = default
        self.doc = doc
        self.module = module

    @property
    def anchor(self):
        if self.module:
            return "d-%s-%s" % (self.module, self.name)
        return "d-" + self.name

    @property
    def key(self):
        return "%s/%s" % (self.module, self.name) if self.module else self.name


def parse(text):
    """Parse --list-directives output into a list of Directive objects.

    A directive whose contexts name filter modules becomes one entry per
    module (anchor d-MODULE-NAME); any other becomes one core entry
    (anchor d-NAME)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t", 4)
        if len(fields) != 5:
            raise ValueError("--list-directives line %d has %d fields, want 5: %r"
                             % (lineno, len(fields), line))
        name, contexts, dtype, default, doc = (f.strip() for f in fields)
        ctx = [c.strip() for c in contexts.split(",") if c.strip()]
        modules = [c[len("filter:"):] for c in ctx if c.startswith("filter:")]
        # "proxy" is a block of its own only for the directives no other
        # block takes; shared ones stay core (context "relay, proxy").
        blocks = [c for c in ctx if c in BLOCKS and (c != "proxy" or ctx == ["proxy"])]
        core_ctx = [c for c in ctx if not c.startswith("filter:") and c not in blocks]
        if core_ctx:
            out.append(Directive(name, core_ctx, dtype, default, doc))
        for m in modules:
            out.append(Directive(name, ["filter:" + m], dtype, default, doc, m))
        for b in blocks:
            out.append(Directive(name, [b], dtype, default, doc, b))
    return out


def syntax_value(d):
    extra = EXTRA.get(d.key, {})
    if "syntax" in extra:
        return extra["syntax"]
    t = d.type
    if t in TYPE_SYNTAX:
        return TYPE_SYNTAX[t]
    # An enum may be reported as "a|b|c", "enum:a|b|c" or "enum(a|b|c)".
    for prefix in ("enum:", "enum(", "enum="):
        if t.startswith(prefix):
            t = t[len(prefix):].rstrip(")")
    if "|" in t:
        return " | ".join("<code>%s</code>" % esc(v) for v in t.split("|"))
    return "<i>%s</i>" % esc(t)


def render_directive(d):
    extra = EXTRA.get(d.key, {})
    ctx = ", ".join(esc(c) for c in d.contexts)
    if extra.get("required"):
        default = "&mdash; (required)"
    elif d.default in ("-", ""):
        default = "&mdash;"
    else:
        default = "<code>%s: %s</code>" % (esc(d.name), esc(d.default))
    doc = d.doc if d.doc not in ("", "-") else "(undocumented)"
    parts = [
        '<div class="directive" id="%s">' % d.anchor,
        "<h3>%s</h3>" % esc(d.name),
        '<table class="syntax">',
        "<tr><th>Syntax:</th><td><code>%s:</code> %s</td></tr>"
        % (esc(d.name), syntax_value(d)),
        "<tr><th>Default:</th><td>%s</td></tr>" % default,
        "<tr><th>Context:</th><td>%s</td></tr>" % ctx,
        "</table>",
        "<p>%s</p>" % esc(doc),
    ]
    if extra.get("text"):
        parts.append(extra["text"].strip())
    if extra.get("example"):
        parts.append("<p>Example:</p>")
        parts.append("<pre><code>%s</code></pre>" % esc(extra["example"]))
    parts.append("</div>")
    return "\n".join(parts)


def page(title, here, body):
    nav = []
    for href, label in NAV:
        cls = []
        if href == "index.html":
            cls.append("brand")
        if href == here:
            cls.append("here")
        c = ' class="%s"' % " ".join(cls) if cls else ""
        nav.append('<a href="%s"%s>%s</a>' % (href, c, label))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>%s &mdash; xrayd</title>\n"
        '<link rel="stylesheet" href="xrayd.css">\n'
        "</head>\n<body>\n<nav>%s</nav>\n<main>\n%s\n</main>\n"
        "<footer>This page is generated by contrib/gen-directive-docs.py from "
        "<code>xrayd --list-directives</code>; edit the directive tables or the "
        "script, not this file.</footer>\n"
        "</body>\n</html>\n" % (esc(title), "".join(nav), body)
    )


def render(directives):
    core = [d for d in directives if not d.module]
    modules = sorted(set(d.module for d in directives if d.module))

    groups = []
    placed = set()
    for gid, title, ctxset, intro in CORE_GROUPS:
        members = sorted((d for d in core if frozenset(d.contexts) == ctxset),
                         key=lambda d: d.name)
        placed.update(id(d) for d in members)
        if members:
            groups.append((gid, title, intro, members))
    others = sorted((d for d in core if id(d) not in placed), key=lambda d: d.name)
    if others:
        groups.append(("other", "Other", "", others))
    for b in BLOCKS:
        members = sorted((d for d in directives if d.module == b), key=lambda d: d.name)
        if members:
            groups.append(("b-" + b, BLOCKS[b][0], BLOCKS[b][1], members))
    for m in modules:
        if m in BLOCKS:
            continue
        members = sorted((d for d in directives if d.module == m), key=lambda d: d.name)
        groups.append(("m-" + m, "Module " + m,
                       "Directives of the <code>%s</code> filter, written inside its "
                       "entry in <a href=\"#d-filters\">filters</a>: "
                       "<code>- %s: {...}</code>." % (esc(m), esc(m)),
                       members))

    out = ["<h1>Directive reference</h1>",
           "<p>Every directive xrayd and its built-in filter modules accept. The "
           "configuration is one YAML file (plus what it "
           "<a href=\"#d-include\">includes</a>); "
           "<code>xrayd -t -c FILE</code> checks it and reports the first error as "
           "<code>FILE:LINE:COL: \"directive\": reason</code>. "
           "A worked example is <code>conf/xrayd.yaml</code> in the source tree; "
           "<a href=\"getting-started.html\">Getting started</a> walks through it.</p>",
           '<h2 id="values">Values</h2>',
           "<table>",
           "<tr><th>type</th><th>written as</th></tr>",
           "<tr><td><i>size</i></td><td>bytes, with an optional suffix "
           "<code>k</code>, <code>m</code>, <code>g</code> (powers of 1024, either case): "
           "<code>4096</code>, <code>64k</code>, <code>1m</code>, <code>1g</code></td></tr>",
           "<tr><td><i>time</i></td><td>a number and a unit <code>ms</code>, "
           "<code>s</code>, <code>m</code>, <code>h</code>, <code>d</code>: "
           "<code>500ms</code>, <code>5s</code>, <code>2m</code>, <code>1h</code>, "
           "<code>1d</code>; a bare number is seconds</td></tr>",
           "<tr><td><code>on</code> | <code>off</code></td><td>also <code>yes</code>/"
           "<code>no</code>, <code>true</code>/<code>false</code></td></tr>",
           "<tr><td><i>address</i></td><td><code>HOST:PORT</code>: "
           "<code>127.0.0.1:8080</code>, <code>\"[::1]:8080\"</code>, "
           "<code>*:8080</code></td></tr>",
           "<tr><td><i>path</i></td><td>a file name; a relative one is resolved "
           "against the directory of the YAML file that contains it</td></tr>",
           "</table>",
           "<p>The <em>Context</em> of a directive says where it may appear: "
           "<code>main</code> is the top level of the file, <code>relay</code> an "
           "entry of the <a href=\"#d-relay\">relay</a> list, "
           "<code>tls</code> and <code>upstream_tls</code> the mappings of those "
           "names in a relay block, "
           "<code>filter:NAME</code> the directives of filter module NAME in a "
           "relay block's <a href=\"#d-filters\">filters</a>. A directive in the "
           "wrong place, an unknown directive or a value of the wrong type is "
           "an error at start-up, on <code>-t</code> and on reload.</p>",
           '<h2 id="index">Index</h2>']
    for gid, title, _intro, members in groups:
        links = ", ".join('<a href="#%s"><code>%s</code></a>' % (d.anchor, esc(d.name))
                          for d in members)
        out.append('<p><a href="#%s">%s</a>: %s</p>' % (gid, esc(title), links))
    for gid, title, intro, members in groups:
        out.append('<h2 id="%s">%s</h2>' % (gid, esc(title)))
        if intro:
            out.append("<p>%s</p>" % intro)
        for d in members:
            out.append(render_directive(d))
    return page("Directive reference", "directives.html", "\n".join(out))


def list_directives(binary):
    r = subprocess.run([binary, "--list-directives"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("%s --list-directives exited %d: %s"
                           % (binary, r.returncode, r.stderr.decode(errors="replace")))
    return r.stdout.decode("utf-8")


def main(argv):
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if len(argv) > 3:
        print("usage: gen-directive-docs.py [BINARY [OUTPUT]]", file=sys.stderr)
        return 2
    binary = argv[1] if len(argv) > 1 else "objs/xrayd"
    if len(argv) <= 1 and not os.path.exists(binary):
        # Run from elsewhere: fall back to the repository's build.
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        binary = os.path.join(repo, "objs", "xrayd")
    directives = parse(list_directives(binary))

    for d in directives:
        if d.doc in ("", "-"):
            print("gen-directive-docs: warning: %s has no doc line" % d.key,
                  file=sys.stderr)
    known = set(d.key for d in directives)
    for k in sorted(set(EXTRA) - known):
        print("gen-directive-docs: warning: EXTRA[%r] names no directive" % k,
              file=sys.stderr)

    text = render(directives)
    # The quick start serves this manual through xrayd with the shipped
    # configuration, whose signature filter closes any stream carrying
    # "/etc/passwd".  Write the examples' pattern with a character
    # reference: it reads and copies the same, but the bytes differ, so
    # the manual can be browsed through the demo relay.
    text = text.replace("/etc/passwd", "/etc/&#112;asswd")
    if len(argv) > 2:
        tmp = argv[2] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, argv[2])
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
