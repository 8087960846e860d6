package cni_test

import (
	"os"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/podpath/podpath/cni"
	"github.com/podpath/podpath/internal/sim"
	"github.com/podpath/podpath/loader"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func libcniDel(t *testing.T, n *sim.Node, rt *libcni.RuntimeConf) error {
	t.Helper()
	return n.Do(func() error { return n.CNI().DelNetworkList(testContext(t), n.NetworkList(), rt) })
}

func nodeRoutes(t *testing.T, n *sim.Node) []netlink.Route {
	t.Helper()
	var routes []netlink.Route
	if err := n.Do(func() (err error) {
		routes, err = netlink.RouteList(nil, unix.AF_INET)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return routes
}

// DEL removes the host veth (and with it the pod end and the node route),
// the endpoint entry, the address file and the attachments of from_pod and
// to_pod; a second DEL, and one without a netns as containerd sends at
// sandbox removal, succeed.
func TestDelRemovesEverything(t *testing.T) {
	n := newNode(t, "del", "10.77.5.0/24")
	p := addPod(t, n, "a")
	hostName := cni.HostVethName(p.ContainerID, sim.IfName)
	addrFile := cni.AddressFile(n.StateDir, p.IP)

	if _, err := os.Stat(addrFile); err != nil {
		t.Fatalf("address file after ADD: %v", err)
	}
	if got := attachedVeths(t, n); !slices.Equal(got, []string{"from_pod@ingress@" + hostName, "to_pod@egress@" + hostName}) {
		t.Fatalf("attachments after ADD: %v", got)
	}
	if len(nodeRoutes(t, n)) != 1 {
		t.Fatalf("node routes after ADD: %v", nodeRoutes(t, n))
	}

	rt := p.RuntimeConf()
	if err := libcniDel(t, n, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if v := hostVeths(t, n); len(v) != 0 {
		t.Errorf("host veths after DEL: %v", v)
	}
	if eps := endpoints(t, n); len(eps) != 0 {
		t.Errorf("endpoints after DEL: %v", eps)
	}
	if _, err := os.Stat(addrFile); !os.IsNotExist(err) {
		t.Errorf("address file after DEL: %v", err)
	}
	if pins := attachedVeths(t, n); len(pins) != 0 {
		t.Errorf("attachments after DEL: %v", pins)
	}
	if r := nodeRoutes(t, n); len(r) != 0 {
		t.Errorf("node routes after DEL: %v", r)
	}
	inPod(t, p, func() error {
		if _, err := netlink.LinkByName(sim.IfName); err == nil {
			t.Errorf("pod still has %s after DEL", sim.IfName)
		}
		return nil
	})

	if err := libcniDel(t, n, rt); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	noNetns := *rt
	noNetns.NetNS = ""
	if err := libcniDel(t, n, &noNetns); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	// And with a netns that no longer exists.
	if err := n.DelPod(testContext(t), p); err != nil {
		t.Fatalf("DelPod: %v", err)
	}
	if err := libcniDel(t, n, rt); err != nil {
		t.Fatalf("DEL with a deleted netns: %v", err)
	}
}

// DEL of a pod whose netns is gone and whose datapath was reset still
// cleans up the node and releases the address.
func TestDelWithoutNetnsOrDatapath(t *testing.T) {
	n := newNode(t, "delnodp", "10.77.6.0/24")
	p := addPod(t, n, "a")
	rt := p.RuntimeConf()
	if err := sim.RemoveNetNS(p.NS); err != nil {
		t.Fatal(err)
	}
	p.NS = nil
	if err := n.Do(func() error { return loader.Reset(n.PinRoot, n.StateDir) }); err != nil {
		t.Fatal(err)
	}
	rt.NetNS = ""
	if err := libcniDel(t, n, rt); err != nil {
		t.Fatalf("DEL without datapath: %v", err)
	}
	if a := allocations(t, n); len(a) != 0 {
		t.Errorf("addresses after DEL: %v", a)
	}
	if v := hostVeths(t, n); len(v) != 0 {
		t.Errorf("host veths after DEL: %v", v)
	}
}

// ADD repeated for the same container and interface keeps the address and
// leaves one working attachment.
func TestAddTwiceSameAddress(t *testing.T) {
	n := newNode(t, "addtwice", "10.77.7.0/24")
	p := addPod(t, n, "a")
	other := addPod(t, n, "b")
	var again *types100.Result
	if err := n.Do(func() error {
		res, err := n.CNI().AddNetworkList(testContext(t), n.NetworkList(), p.RuntimeConf())
		if err == nil {
			again, err = types100.NewResultFromResult(res)
		}
		return err
	}); err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	if got := again.IPs[0].Address.IP.String(); got != p.IP.String() {
		t.Fatalf("second ADD gave %s, first %s", got, p.IP)
	}
	if a := allocations(t, n); len(a) != 2 {
		t.Errorf("address files: %v", a)
	}
	if v := hostVeths(t, n); len(v) != 2 {
		t.Errorf("host veths: %v", v)
	}
	if err := n.CheckPod(testContext(t), p); err != nil {
		t.Fatalf("CHECK after second ADD: %v", err)
	}
	tcpExchange(t, p, other)
	udpExchange(t, other, p)
}
