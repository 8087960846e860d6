package datapath_test

// Other nodes as the programs see them: the peers map (bpf/lib/maps.h)
// names another node's pod CIDR and its own address, with the node's
// underlay address and how to reach it (bpf/lib/peer.h). Encapsulation is
// decided and prepared here (the tunnel key itself goes with the packet
// into the kernel's VXLAN device, which BPF_PROG_RUN cannot show);
// routing needs a FIB, so those cases run in a network namespace of their
// own with a route and a neighbour towards the node. Decapsulation needs a
// tunnel key from a real VXLAN device: test/multinode sends from_overlay
// VXLAN packets from hosts on an underlay.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/podpath/podpath/internal/progrun"
	"github.com/podpath/podpath/maps"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	peerPodCIDR   = netip.MustParsePrefix("10.244.2.0/24") // remotePodIP's node's pods
	peerNodeIP    = netip4("192.168.1.7")                  // that node, on the uplink's segment
	silentNodeIP  = netip4("192.168.1.8")                  // a node whose neighbour entry is missing
	farNodeIP     = netip4("203.0.113.9")                  // a node the FIB has no route to
	otherPodIP    = netip4("10.244.3.9")                   // in the cluster, in no peer's pod CIDR
	uplinkAddr    = netip.MustParsePrefix("192.168.1.5/24")
	peerNodeMAC   = mustMAC("52:54:00:00:01:07")
	tunnelSrcMAC  = mustMAC("0e:71:00:00:00:00") // lib/peer.h: no device's
	overlayIndex  = uint32(77)                   // the overlay device, a redirect target only
	overlayMTU    = uint16(1450)
	fibUplinkName = "uplink0"
)

// peerEntry is one peers map entry.
type peerEntry struct {
	Prefix netip.Prefix
	Node   netip.Addr
	Flags  uint8 // maps.PeerFlagTunnel, maps.PeerFlagNode
	MTU    uint16
}

// tunnelPeer and routedPeer are the entries for a node's pod CIDR as
// overlay mode and direct routing write them; nodeEntry is the node's own
// address.
func tunnelPeer(p netip.Prefix, node netip.Addr) peerEntry {
	return peerEntry{Prefix: p, Node: node, Flags: maps.PeerFlagTunnel, MTU: overlayMTU}
}

func routedPeer(p netip.Prefix, node netip.Addr) peerEntry {
	return peerEntry{Prefix: p, Node: node}
}

func (e peerEntry) nodeEntry() peerEntry {
	e.Prefix = netip.PrefixFrom(e.Node, 32)
	e.Flags |= maps.PeerFlagNode
	return e
}

func putPeers(t *testing.T, m *ebpf.Map, entries ...peerEntry) {
	t.Helper()
	for _, e := range entries {
		k := maps.PeerKey{Prefixlen: 32 + uint32(e.Prefix.Bits()), Family: maps.FamilyIPv4, Addr: maps.Addr16(e.Prefix.Addr())}
		v := maps.Peer{NodeAddr: maps.Addr16(e.Node), Family: maps.FamilyIPv4, Flags: e.Flags, Mtu: e.MTU}
		if e.Flags&maps.PeerFlagTunnel != 0 {
			v.Ifindex, v.Vni = overlayIndex, 1
		}
		if err := m.Put(&k, &v); err != nil {
			t.Fatalf("peer %s: %v", e.Prefix, err)
		}
	}
}

// newPeerDatapath is from_pod with pods A and B and the given peers.
func newPeerDatapath(t *testing.T, entries ...peerEntry) *datapath {
	t.Helper()
	d, _ := newPeerDatapathVars(t, nil, entries...)
	return d
}

// newPeerDatapathVars is newPeerDatapath with from_pod's read-only
// variables set (loadNodeVars), and the node for its other maps.
func newPeerDatapathVars(t *testing.T, vars map[string]any, entries ...peerEntry) (*datapath, *progrun.Node) {
	t.Helper()
	n := loadNodeVars(t, []string{maps.ProgFromPod}, nil, 0, vars)
	d := &datapath{
		fromPod:   n.Programs[maps.ProgFromPod],
		endpoints: maps.NewEndpoints(n.Maps[maps.MapEndpoints]),
		counters:  n.Maps[maps.MapCounters],
	}
	for _, p := range []pod{podA, podB} {
		if err := d.endpoints.Put(p.IP, p.info()); err != nil {
			t.Fatal(err)
		}
	}
	putPeers(t, n.Maps[maps.MapPeers], entries...)
	return d, n
}

// overlayMAC is the overlay device's MAC on the node with address a.
func overlayMAC(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x0e, 0x70, b[0], b[1], b[2], b[3]}
}

// encapsulated is f as from_pod hands it to the overlay device: routed
// one hop (TTL down), addressed to the receiving node's overlay device
// from no device's MAC.
func (f flow) encapsulated(node netip.Addr) []byte {
	f.TTL--
	return ether(overlayMAC(node), tunnelSrcMAC, ethPIPv4, f.ip())
}

// Overlay mode: a pod's packet to a pod or the address of another node is
// encapsulated towards that node: from_pod redirects it (TC_ACT_REDIRECT,
// to the overlay device), routed one hop (TTL down, header checksum
// updated), with the Ethernet addresses lib/peer.h gives it (the
// receiving node's overlay device, from 0e:71:00:00:00:00), and counts it
// as forward_tunnel. Only the Ethernet header and the TTL change.
func TestFromPodToPeerEncapsulated(t *testing.T) {
	peer := tunnelPeer(peerPodCIDR, peerNodeIP)
	for _, tc := range []struct {
		name string
		f    flow
	}{
		{"UDP to a pod on the node", udpFlow(podA.IP, 40700, remotePodIP, 53)},
		{"TCP to a pod on the node", tcpFlow(podA.IP, 40701, remotePodIP, 80, tcpSYN)},
		{"TCP to the node's own address", tcpFlow(podA.IP, 40702, peerNodeIP, 10250, tcpSYN)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newPeerDatapath(t, peer, peer.nodeEntry())
			in := tc.f.sentBy(podA)
			ret, out := d.runFromPod(t, podA.Ifindex, in)
			if ret != tcActRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", ret, tcActRedirect)
			}
			expectBytes(t, "packet", out, tc.f.encapsulated(peerNodeIP))
			expectChecksums(t, out)
			d.expectCounts(t, one("from_pod/forward_tunnel", in))
		})
	}
}

// from_pod leaves to the stack what it must not send on itself, untouched:
// a destination in no peer's range (the cluster's, but no node owns it),
// and a packet larger than the overlay takes (not GSO), which the stack
// fragments or answers with fragmentation needed (to_stack_mtu). A
// packet whose TTL runs out is dropped before any of it.
func TestFromPodPeerLeftToStack(t *testing.T) {
	peer := tunnelPeer(peerPodCIDR, peerNodeIP)
	big := udpFlow(podA.IP, 40711, remotePodIP, 53)
	big.Payload = make([]byte, int(overlayMTU)-28+1)
	dying := udpFlow(podA.IP, 40712, remotePodIP, 53)
	dying.TTL = 1
	for _, tc := range []struct {
		name    string
		f       flow
		verdict uint32
		reason  string
	}{
		{"in no peer's pod CIDR", udpFlow(podA.IP, 40710, otherPodIP, 53), tcActOK, "to_stack"},
		{"one byte over the overlay's MTU", big, tcActOK, "to_stack_mtu"},
		{"TTL 1", dying, tcActShot, "drop_ttl_exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newPeerDatapath(t, peer, peer.nodeEntry())
			in := tc.f.sentBy(podA)
			ret, out := d.runFromPod(t, podA.Ifindex, in)
			if ret != tc.verdict {
				t.Errorf("verdict %d, want %d", ret, tc.verdict)
			}
			expectBytes(t, "packet", out, in)
			d.expectCounts(t, one("from_pod/"+tc.reason, in))
		})
	}
}

// fibNetns runs fn on a thread of its own in a new network namespace with
// forwarding on, where pod A's veth is a veth with its ifindex and the
// uplink, uplink0, a veth with uplinkMAC and address
// 192.168.1.5/24, its peer the node 192.168.1.7 with a permanent
// neighbour entry (peerNodeMAC) and 192.168.1.8 without one. Its MTU is
// 1500. The thread and the namespace go away afterwards.
func fibNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with this goroutine.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("new network namespace: %w", err)
			}
			if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
				return err
			}
			podDev := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pods", Index: int(podA.Ifindex)}, PeerName: "pods0"}
			up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fibUplinkName, HardwareAddr: uplinkMAC, MTU: 1500}, PeerName: "peer0"}
			for _, l := range []netlink.Link{podDev, up} {
				if err := netlink.LinkAdd(l); err != nil {
					return fmt.Errorf("create %s: %w", l.Attrs().Name, err)
				}
			}
			for _, name := range []string{"pods", "pods0", fibUplinkName, "peer0"} {
				l, err := netlink.LinkByName(name)
				if err == nil {
					err = netlink.LinkSetUp(l)
				}
				if err != nil {
					return fmt.Errorf("%s up: %w", name, err)
				}
			}
			l, err := netlink.LinkByName(fibUplinkName)
			if err != nil {
				return err
			}
			if l.Attrs().Index == int(podA.Ifindex) {
				return errors.New("the uplink took pod A's ifindex")
			}
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: uplinkAddr.Addr().AsSlice(), Mask: net.CIDRMask(uplinkAddr.Bits(), 32)}}); err != nil {
				return err
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: peerNodeIP.AsSlice(), HardwareAddr: peerNodeMAC}); err != nil {
				return fmt.Errorf("neighbour %s: %w", peerNodeIP, err)
			}
			return fn()
		}()
	}()
	return <-errc
}

// Direct routing: a pod's packet to another node's pod is routed towards
// the node by FIB lookup and leaves redirected (TC_ACT_REDIRECT) by
// bpf_redirect_neigh, one hop routed (TTL decremented), its MACs as the pod
// sent them: the neighbour subsystem writes them as the packet leaves,
// whether the node's neighbour entry is at hand or not (lib/fib.h). Both
// count as forward_routed. A packet larger than the uplink's MTU (not GSO) and a
// node the FIB has no route to are the stack's (to_stack_mtu, to_stack),
// untouched.
func TestFromPodToPeerRouted(t *testing.T) {
	requireIngressIfindex(t)
	f := udpFlow(podA.IP, 40720, remotePodIP, 53)
	routed := f
	routed.TTL--
	big := f
	big.Payload = make([]byte, 1500-28+1)
	tests := []struct {
		name    string
		node    netip.Addr
		f       flow
		verdict uint32
		want    []byte
		reason  string
	}{
		{"neighbour known", peerNodeIP, f, tcActRedirect, routed.sentBy(podA), "forward_routed"},
		{"neighbour unknown", silentNodeIP, f, tcActRedirect, routed.sentBy(podA), "forward_routed"},
		{"over the uplink's MTU", peerNodeIP, big, tcActOK, big.sentBy(podA), "to_stack_mtu"},
		{"no route to the node", farNodeIP, f, tcActOK, f.sentBy(podA), "to_stack"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newPeerDatapath(t, routedPeer(peerPodCIDR, tc.node))
			in := tc.f.sentBy(podA)
			var (
				ret uint32
				out []byte
			)
			err := fibNetns(func() (err error) {
				ret, out, err = progrun.RunTC(d.fromPod, skbContext{IngressIfindex: podA.Ifindex}, in)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if ret != tc.verdict {
				t.Errorf("verdict %d, want %d", ret, tc.verdict)
			}
			expectBytes(t, "packet", out, tc.want)
			expectChecksums(t, out)
			d.expectCounts(t, one("from_pod/"+tc.reason, in))
		})
	}
}

// Egress masquerade spares other nodes: to_netdev leaves a pod's packet
// to another node's pod or to the node's own address as it is, even where
// the nonmasq ranges do not cover them, and makes no mapping; the same
// packet to an address no peer owns is masqueraded, so the exemption is
// the peers map's doing.
func TestToNetdevSparesPeers(t *testing.T) {
	outsideCIDR := netip.MustParsePrefix("10.250.2.0/24") // a node's pods outside the nonmasq ranges
	peer := routedPeer(outsideCIDR, peerNodeIP)
	for _, tc := range []struct {
		name string
		dst  netip.Addr
		masq bool
	}{
		{"a pod of a peer", netip4("10.250.2.9"), false},
		{"a peer's own address", peerNodeIP, false},
		{"an address no peer owns", netip4("10.250.3.9"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			putPeers(t, d.peers, peer, peer.nodeEntry())
			f := tcpFlow(podA.IP, podPort, tc.dst, serverPort, tcpSYN)
			in := leaving(f.ip())
			r := d.egress(t, in)
			expectVerdict(t, r, tcActOK)
			if tc.masq {
				port := d.allocatedPort(t, r.out)
				expectBytes(t, "packet", r.out, leaving(f.from(masqIP, port).ip()))
				d.expectCounts(t, one("to_netdev/snat", in))
				return
			}
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, one("to_netdev/to_stack", in))
			d.expectMappings(t, emptyMapping)
		})
	}
}

// to_overlay, on the overlay device's egress, gets the node's own packets
// the kernel routed there by the routes podpath keeps for other nodes' pod
// CIDRs: one for a peer reached through the overlay leaves with its tunnel
// key set from the peers map (forward_tunnel), untouched otherwise;
// anything for no such peer (none at all, or one reached by direct
// routing) would find no tunnel and is dropped (drop_no_peer).
func TestToOverlayKeysNodeTraffic(t *testing.T) {
	for _, tc := range []struct {
		name    string
		dst     netip.Addr
		verdict uint32
		reason  string
	}{
		{"a pod of a peer through the overlay", remotePodIP, tcActOK, "forward_tunnel"},
		{"in no peer's pod CIDR", otherPodIP, tcActShot, "drop_no_peer"},
		{"a peer by direct routing", netip4("10.244.4.4"), tcActShot, "drop_no_peer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := loadNode(t, []string{maps.ProgToOverlay}, nil, 0)
			putPeers(t, n.Maps[maps.MapPeers], tunnelPeer(peerPodCIDR, peerNodeIP),
				routedPeer(netip.MustParsePrefix("10.244.4.0/24"), silentNodeIP))
			d := &datapath{counters: n.Maps[maps.MapCounters]}
			f := udpFlow(uplinkAddr.Addr(), 40730, tc.dst, 53)
			in := ether(overlayMAC(peerNodeIP), overlayMAC(uplinkAddr.Addr()), ethPIPv4, f.ip())
			r := runTC(t, n.Programs[maps.ProgToOverlay], maps.ProgToOverlay, skbContext{}, in)
			expectVerdict(t, r, tc.verdict)
			expectBytes(t, "packet", r.out, in)
			d.expectCounts(t, one("to_overlay/"+tc.reason, in))
		})
	}
}

// A node's stack answers a client outside the cluster with fragmentation
// needed about a NodePort datagram it translated to a backend on another
// node (too large for the overlay). The error quotes client -> backend;
// to_netdev must make it quote client -> the node's NodePort, as the
// client sent it, with every checksum right, and counts it as svc_reply.
// An error about no service flow leaves untouched.
func TestToNetdevServiceICMPError(t *testing.T) {
	const nodePort = 30080
	client := serverIP
	req := udpFlow(client, 40740, masqIP, nodePort).with("a large datagram, cut short")
	translated := req.to(remotePodIP, backendPort)
	for _, tc := range []struct {
		name  string
		seed  bool
		quote []byte
	}{
		{"about a NodePort flow", true, req.ip()},
		{"about no service flow", false, translated.ip()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{})
			if tc.seed {
				d.putFrontendReply(t, req, translated)
			}
			sent := icmpError{Src: masqIP, Dst: client, Type: icmpDestUnreach, Code: 4, Rest: uint32(overlayMTU), Quote: translated.ip(), TTL: 64}
			want := sent
			want.Quote = tc.quote
			in := leaving(sent.ip())
			r := d.egress(t, in)
			expectVerdict(t, r, tcActOK)
			expectBytes(t, "error", r.out, leaving(want.ip()))
			expectSNATChecksums(t, r.out)
			reason := "to_netdev/to_stack"
			if tc.seed {
				reason = "to_netdev/svc_reply"
			}
			d.expectCounts(t, one(reason, in))
		})
	}
}

// putFrontendReply writes the conntrack entry a frontend's translation of
// req into translated (to a backend) leaves for the backend's replies:
// backend -> client, translated back to the frontend.
func (d *snatDatapath) putFrontendReply(t *testing.T, req, translated flow) {
	t.Helper()
	k := ctKey(req.Proto, translated.Dst, translated.Dport, req.Src, req.Sport)
	e := maps.CtEntry{Expires: monotonic(t) + uint64(lifetimeNonTCP), SvcId: 1, BackendId: backendRemote,
		NatAddr: maps.Addr16(req.Dst), NatPort: maps.Port(req.Dport), Flags: maps.CtFlagReply}
	if err := d.conntrack.Put(&k, &e); err != nil {
		t.Fatal(err)
	}
}

// A NodePort's datagram translated to a backend on another node leaves
// masqueraded where it leaves the node: through the uplink (to_netdev,
// direct routing) or into the overlay (to_overlay). Larger than the MTU,
// it comes as fragments, and only the first carries the ports the
// masquerade allocates and decides on: the later ones must get the node's
// address as well, or the backend's node never reassembles the datagram.
// Every fragment comes out exactly as the masqueraded datagram's would be
// fragmented (only the IPv4 header changes in the later ones).
func TestFrontendFragmentsMasqueraded(t *testing.T) {
	for _, hook := range []string{maps.ProgToNetdev, maps.ProgToOverlay} {
		t.Run(hook, func(t *testing.T) {
			d := newSNATDatapath(t, snatSetup{Overlay: true})
			putPeers(t, d.peers, tunnelPeer(peerPodCIDR, peerNodeIP))
			req := udpFlow(serverIP, 40750, masqIP, 30080)
			req.Payload = make([]byte, 3000)
			translated := req.to(remotePodIP, backendPort)
			d.putFrontendReply(t, req, translated)
			prog, frame, reasons := d.toNetdev, leaving, []string{"to_netdev/snat"}
			if hook == maps.ProgToOverlay {
				// Masqueraded and keyed here, each counted once, as snat.
				prog, reasons = d.toOverlay, []string{"to_overlay/snat"}
				frame = func(ip []byte) []byte { return ether(overlayMAC(peerNodeIP), tunnelSrcMAC, ethPIPv4, ip) }
			}
			sent := fragmented(translated)
			var port uint16
			var out [][]byte
			want := counts{}
			for i, f := range sent {
				in := frame(f)
				r := runTC(t, prog, hook, skbContext{}, in)
				expectVerdict(t, r, tcActOK)
				if i == 0 {
					port = d.allocatedPort(t, r.out)
				}
				out = append(out, r.out)
				for _, reason := range reasons {
					c := want[reason]
					want[reason] = count{c.Packets + 1, c.Bytes + uint64(len(in))}
				}
			}
			for i, f := range fragmented(translated.from(masqIP, port)) {
				expectBytes(t, fmt.Sprintf("fragment %d", i), out[i], frame(f))
			}
			d.expectCounts(t, want)
		})
	}
}
