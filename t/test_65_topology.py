"""The XRAY section 8 topology itself (t/netns.py), before any agent runs in
it: the path a - nata = natb - b works hop by hop, direct connections
through either NAT box are silently dropped, the NAT boxes reach each other
over the public segment, hosts of one LAN reach each other through the
bridge, and nothing is left behind after teardown, however it happens.

Needs root and `ip netns`; skips otherwise.  Listeners and clients are
/usr/bin/python3 inside the namespaces (Topology.listen / .connect)."""

import os
import subprocess

import pytest

import netns

topology = netns.topology  # the fixture, visible to this module

_why = netns.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))

PORT = 7000


def _leftovers(names):
    return sorted(set(names) & set(netns.list_netns()))


@pytest.mark.timeout(60)
def test_path_hop_by_hop(topology):
    """a reaches nata on LAN A, nata reaches natb over the public segment,
    natb reaches b on LAN B; each listener sees the sender's own address."""
    t = topology
    t.listen("nata", t.addr("nata"), PORT)
    t.listen("natb", t.pub_addr("natb"), PORT)
    t.listen("b", t.addr("b"), PORT)
    assert t.connect("a", t.addr("nata"), PORT) == ("ok", t.addr("a"))
    assert t.connect("nata", t.pub_addr("natb"), PORT) == \
        ("ok", t.pub_addr("nata"))
    assert t.connect("natb", t.addr("b"), PORT) == ("ok", t.addr("natb"))


@pytest.mark.timeout(60)
def test_direct_connections_are_dropped(topology):
    """a -> b and b -> a time out (dropped silently, not refused or
    unreachable), and so does a -> natb's public address: NAT box A
    forwards nothing outbound either."""
    t = topology
    t.listen("b", t.addr("b"), PORT)
    t.listen("a", t.addr("a"), PORT)
    t.listen("natb", t.pub_addr("natb"), PORT)
    assert t.addr("b") == "198.18.2.2"
    assert t.connect("a", t.addr("b"), PORT, timeout=2) == ("timeout", "")
    assert t.connect("b", t.addr("a"), PORT, timeout=2) == ("timeout", "")
    assert t.connect("a", t.pub_addr("natb"), PORT, timeout=2) == \
        ("timeout", "")
    # The listeners are there all the same: their own NAT boxes reach them.
    assert t.connect("natb", t.addr("b"), PORT).status == "ok"
    assert t.connect("nata", t.addr("a"), PORT).status == "ok"


@pytest.mark.timeout(60)
def test_nat_boxes_talk_over_the_public_segment(topology):
    """The agents' link: natb's public listener is reachable from nata,
    and the other way round."""
    t = topology
    t.listen("natb", t.pub_addr("natb"), PORT)
    t.listen("nata", t.pub_addr("nata"), PORT)
    assert t.connect("nata", t.pub_addr("natb"), PORT) == \
        ("ok", t.pub_addr("nata"))
    assert t.connect("natb", t.pub_addr("nata"), PORT) == \
        ("ok", t.pub_addr("natb"))


@pytest.mark.timeout(60)
def test_only_the_firewall_stops_direct_connections(topology):
    """Control: with the forward policy of both boxes switched to accept,
    a -> b succeeds and b sees nata's public address (masquerade), so the
    time-outs above come from the firewall, not from missing routes."""
    t = topology
    t.listen("b", t.addr("b"), PORT)
    for box in ("nata", "natb"):
        t.run(box, [netns.NFT, "chain", "inet", "filter", "forward",
                    "{ policy accept; }"], check=True)
    assert t.connect("a", t.addr("b"), PORT) == ("ok", t.pub_addr("nata"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("topology", [{"b2": True}], indirect=True)
def test_intra_network_through_the_bridge(topology):
    """b and b2 reach each other across natb's LAN bridge (whose frames
    cross natb's forward hook: bridge-nf-call-iptables is 1), while b2 is
    as cut off from A as b."""
    t = topology
    assert t.addr("b2") == "198.18.2.3"
    t.listen("b", t.addr("b"), PORT)
    t.listen("b2", t.addr("b2"), PORT)
    t.listen("a", t.addr("a"), PORT)
    assert t.connect("b", t.addr("b2"), PORT) == ("ok", t.addr("b"))
    assert t.connect("b2", t.addr("b"), PORT) == ("ok", t.addr("b2"))
    assert t.connect("b2", t.addr("a"), PORT, timeout=2) == ("timeout", "")


def _pid_gone(p):
    return p.poll() is not None


def _alive(pid):
    """pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.timeout(60)
def test_context_manager_tears_down():
    with netns.Topology() as t:
        names = t.names
        assert len(names) == 5 and all(n.startswith(t.prefix) for n in names)
        assert _leftovers(names) == sorted(names)
        sleeper = t.popen("b", ["/bin/sleep", "600"])
        # A process popen() does not know of: down() finds it in the netns.
        stray = t.run("a", ["/bin/sh", "-c", "/bin/sleep 600 >/dev/null "
                            "2>&1 & echo $!"], check=True)
        stray_pid = int(stray.stdout)
    assert _leftovers(names) == []
    assert _pid_gone(sleeper)
    assert not _alive(stray_pid)  # not ours by Popen: found in the netns
    assert not os.path.exists(os.path.join(netns.MARKER_DIR, t.prefix))
    t.down()  # idempotent


@pytest.mark.timeout(60)
def test_teardown_after_exception_in_with_block():
    with pytest.raises(RuntimeError, match="boom"):
        with netns.Topology(b2=True) as t:
            names = t.names
            sleeper = t.popen("natb", ["/bin/sleep", "600"])
            assert len(_leftovers(names)) == 6
            raise RuntimeError("boom")
    assert _leftovers(names) == []
    assert _pid_gone(sleeper)


@pytest.mark.timeout(60)
def test_teardown_after_failed_up(monkeypatch):
    """up() that fails half-way (here: at the nftables step, after every
    namespace and link exists) removes what it built and re-raises."""
    monkeypatch.setattr(netns, "NAT_RULES", "this is not nft syntax\n")
    t = netns.Topology()
    with pytest.raises(RuntimeError, match="nft"):
        with t:
            pytest.fail("with-block entered despite failed up()")
    assert _leftovers(t.names) == []
    assert not t.is_up


@pytest.mark.timeout(60)
def test_sweep_stale_spares_live_runs(topology):
    """sweep_stale() deletes namespaces of a dead run (no marker, or a
    marker naming a dead process) and keeps this live topology's."""
    dead = subprocess.Popen(["/bin/true"])
    dead.wait(10)
    no_marker = netns.Topology()
    dead_owner = netns.Topology()
    made = [no_marker.ns("a"), no_marker.ns("pub"), dead_owner.ns("natb")]
    try:
        for n in made:
            subprocess.run([netns.IP, "netns", "add", n], check=True,
                           timeout=20)
        with open(os.path.join(netns.MARKER_DIR, dead_owner.prefix),
                  "w") as f:
            f.write("%d 0\n" % dead.pid)
        gone = netns.sweep_stale()
        assert sorted(made) == sorted(set(gone) & set(made))
        assert _leftovers(made) == []
        assert _leftovers(topology.names) == sorted(topology.names)
        assert not os.path.exists(os.path.join(netns.MARKER_DIR,
                                               dead_owner.prefix))
    finally:
        for n in _leftovers(made):
            subprocess.run([netns.IP, "netns", "delete", n], timeout=20)
