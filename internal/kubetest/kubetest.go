// Package kubetest runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver (and, on request, kube-controller-manager and
// kube-scheduler; a real node with StartNode), built from the
// Go module proxy by scripts/kube-bins.sh and cached by version, started as
// processes inside a network namespace the test made, with certificates
// made here. Nothing is faked: objects go through the real API server's
// validation, defaulting and allocation (cluster IPs, node ports), and the
// controller manager writes real EndpointSlices.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Ports the control plane listens on, inside its namespace.
const (
	APIServerPort = 6443
	etcdPort      = 2379
	etcdPeerPort  = 2380
)

// ServiceCIDR is the cluster's service range; the `kubernetes` Service
// gets its first address.
var ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")

const serviceCIDR6 = "fd00:10:96::/112"

// TB is what kubetest needs of a test: testing.TB satisfies it, and a
// program that is not a test (the benchmark) can bring its own.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

// Bins finds the cached binaries, building them on first use (about 8
// minutes cold on 2 cores). PODPATH_KUBE_BIN names a directory that has
// them already.
func Bins(t TB) string {
	t.Helper()
	if d := os.Getenv("PODPATH_KUBE_BIN"); d != "" {
		return d
	}
	binsOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			binsErr = err
			return
		}
		var out, stderr bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "kube-bins.sh"))
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			binsErr = fmt.Errorf("scripts/kube-bins.sh: %v\n%s", err, tail(stderr.String(), 3000))
			return
		}
		binsDir = strings.TrimSpace(out.String())
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	return binsDir
}

var (
	binsOnce sync.Once
	binsDir  string
	binsErr  error
)

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Cluster is a running control plane.
type Cluster struct {
	// NS is the namespace the control plane runs in; its processes listen
	// on every address there.
	NS ns.NetNS
	// Address is what the API server advertises (the `kubernetes`
	// Service's endpoint): an address of NS.
	Address netip.Addr
	// Kubeconfig is an admin kubeconfig for processes inside NS (the API
	// server at 127.0.0.1).
	Kubeconfig string
	// Client talks to the API server from the test process, whose sockets
	// are made inside NS.
	Client kubernetes.Interface
	Config *rest.Config
	Dir    string
	Bins   string

	mu    sync.Mutex
	procs map[string]*proc
	pki   *pki
}

// Options change what Start runs.
type Options struct {
	// ControllerManager runs kube-controller-manager (EndpointSlices from
	// Services and Pods, node CIDR allocation with ClusterCIDR).
	ControllerManager bool
	ClusterCIDR       string
	// NodeLifecycle also runs the controller manager's node lifecycle
	// controller, for clusters with real kubelets: it lifts the not-ready
	// taint kubelet registers its Node with (and evicts the pods of nodes
	// that stop reporting).
	NodeLifecycle bool
	// Scheduler runs kube-scheduler (without it, pods that name no node
	// stay Pending).
	Scheduler bool
}

// Start runs etcd and kube-apiserver in netns (advertising address, which
// must be an address there, or 127.0.0.1) and waits until the API answers.
// Everything stops and is removed when the test ends.
func Start(t TB, netns ns.NetNS, address netip.Addr, o Options) *Cluster {
	t.Helper()
	c := &Cluster{NS: netns, Address: address, Dir: t.TempDir(), Bins: Bins(t),
		procs: map[string]*proc{}}
	t.Cleanup(func() { c.stopAll(t) })
	var err error
	if c.pki, err = makePKI(c.Dir, address); err != nil {
		t.Fatal(err)
	}
	if c.Kubeconfig, err = c.pki.kubeconfig(c.Dir, fmt.Sprintf("https://127.0.0.1:%d", APIServerPort)); err != nil {
		t.Fatal(err)
	}
	c.startEtcd(t)
	c.StartAPIServer(t)
	c.Config = &rest.Config{
		Host: fmt.Sprintf("https://127.0.0.1:%d", APIServerPort),
		TLSClientConfig: rest.TLSClientConfig{
			CAData: c.pki.caPEM, CertData: c.pki.adminCert, KeyData: c.pki.adminKey,
		},
		Dial:  c.dial,
		QPS:   200,
		Burst: 400,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		t.Fatal(err)
	}
	if o.ControllerManager {
		c.startControllerManager(t, o)
	}
	if o.Scheduler {
		c.start(t, "kube-scheduler", filepath.Join(c.Bins, "kube-scheduler"),
			"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0", "--v=0")
	}
	return c
}

// dial opens a connection from inside the cluster's namespace: a socket
// keeps the namespace it was made in, whichever thread uses it later.
func (c *Cluster) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := c.NS.Do(func(ns.NetNS) error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// HTTPClient is a client whose connections start inside the namespace.
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: c.dial}}
}

func (c *Cluster) startEtcd(t TB) {
	data := filepath.Join(c.Dir, "etcd")
	c.start(t, "etcd", filepath.Join(c.Bins, "etcd"),
		"--name=podpath-test",
		"--data-dir="+data,
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", etcdPeerPort),
		fmt.Sprintf("--initial-cluster=podpath-test=http://127.0.0.1:%d", etcdPeerPort),
		"--unsafe-no-fsync", "--log-level=warn",
	)
}

// StartAPIServer starts (or, after StopAPIServer, restarts) kube-apiserver
// and waits until it is ready.
func (c *Cluster) StartAPIServer(t TB) {
	t.Helper()
	p := c.pki
	c.start(t, "kube-apiserver", filepath.Join(c.Bins, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--advertise-address="+c.Address.String(),
		// Dual-stack, so IPv6-only Services exist to be refused.
		"--service-cluster-ip-range="+ServiceCIDR.String()+","+serviceCIDR6,
		"--service-node-port-range=30000-32767",
		"--tls-cert-file="+p.file("apiserver.crt"),
		"--tls-private-key-file="+p.file("apiserver.key"),
		"--client-ca-file="+p.file("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+p.file("sa.key"),
		"--service-account-signing-key-file="+p.file("sa.key"),
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+p.file("admin.crt"),
		"--kubelet-client-key="+p.file("admin.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false",
		"--v=0",
		// The lease reconciler keeps the kubernetes Service's endpoint on
		// the advertised address, which must not be loopback.
		"--endpoint-reconciler-type="+map[bool]string{true: "none", false: "lease"}[c.Address.IsLoopback()],
	)
	c.waitReady(t)
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL).
func (c *Cluster) StopAPIServer(t TB) { c.stop(t, "kube-apiserver") }

func (c *Cluster) startControllerManager(t TB, o Options) {
	p := c.pki
	// Nodes without a kubelet would turn NotReady and have their pods
	// evicted after about 40 s.
	controllers := "*,-node-lifecycle-controller"
	if o.NodeLifecycle {
		controllers = "*"
	}
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--leader-elect=false",
		"--controllers=" + controllers,
		"--service-account-private-key-file=" + p.file("sa.key"),
		"--root-ca-file=" + p.file("ca.crt"),
		"--use-service-account-credentials=false",
		// Not the host's /usr/libexec/kubernetes/..., which it creates.
		"--flex-volume-plugin-dir=" + filepath.Join(c.Dir, "flexvolume"),
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--v=0",
	}
	if o.ClusterCIDR != "" {
		args = append(args, "--allocate-node-cidrs=true", "--cluster-cidr="+o.ClusterCIDR, "--node-cidr-mask-size=24")
	}
	c.start(t, "kube-controller-manager", filepath.Join(c.Bins, "kube-controller-manager"), args...)
}

// proc is a running control-plane process.
type proc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when it exited
}

// start runs a binary in the cluster's namespace, its output in Dir.
func (c *Cluster) start(t TB, name, bin string, args ...string) {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(c.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.NS.Path(), "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	// No Pdeathsig: it fires when the forking thread exits, and Go ends
	// threads that a namespace switch left locked. Cleanup stops it.
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{cmd: cmd, log: log, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	c.mu.Lock()
	c.procs[name] = p
	c.mu.Unlock()
}

func (c *Cluster) stop(t TB, name string) {
	c.mu.Lock()
	p := c.procs[name]
	delete(c.procs, name)
	c.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.log.Close()
}

func (c *Cluster) stopAll(t TB) {
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		c.stop(t, name)
	}
	if t.Failed() {
		for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"} {
			if b, err := os.ReadFile(filepath.Join(c.Dir, name+".log")); err == nil {
				t.Logf("%s log (tail):\n%s", name, tail(string(b), 4000))
			}
		}
	}
}

// waitReady polls /readyz until the API server answers ok (a minute at
// most: the first start creates every built-in object).
func (c *Cluster) waitReady(t TB) {
	t.Helper()
	cert, err := tls.X509KeyPair(c.pki.adminCert, c.pki.adminKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:     c.dial,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
	}}
	deadline := time.Now().Add(time.Minute)
	var last string
	for time.Now().Before(deadline) {
		resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/readyz", APIServerPort))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		c.mu.Lock()
		p := c.procs["kube-apiserver"]
		c.mu.Unlock()
		exited := p == nil
		if p != nil {
			select {
			case <-p.done:
				exited = true
			case <-time.After(200 * time.Millisecond):
			}
		}
		if exited {
			last = "kube-apiserver exited"
			break
		}
	}
	b, _ := os.ReadFile(filepath.Join(c.Dir, "kube-apiserver.log"))
	t.Fatalf("kube-apiserver not ready after a minute (%s):\n%s", last, tail(string(b), 4000))
}

// pki holds the cluster's certificates and keys, as PEM files in dir.
type pki struct {
	dir                        string
	caPEM, adminCert, adminKey []byte
}

func (p *pki) file(name string) string { return filepath.Join(p.dir, name) }

func makePKI(dir string, address netip.Addr) (*pki, error) {
	p := &pki{dir: filepath.Join(dir, "pki")}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "podpath-test-ca"},
		NotBefore: now, NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	issue := func(serial int64, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now, now.Add(48*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.IP(ServiceCIDR.Addr().Next().AsSlice())}
	if address.IsValid() {
		ips = append(ips, net.IP(address.AsSlice()))
	}
	srvCert, srvKey, err := issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: ips,
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	})
	if err != nil {
		return nil, err
	}
	if p.adminCert, p.adminKey, err = issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "podpath-test-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	for name, b := range map[string][]byte{
		"ca.crt": p.caPEM, "apiserver.crt": srvCert, "apiserver.key": srvKey,
		"admin.crt": p.adminCert, "admin.key": p.adminKey,
		"sa.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}),
	} {
		if err := os.WriteFile(p.file(name), b, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// kubeconfig writes an admin kubeconfig for server.
func (p *pki) kubeconfig(dir, server string) (string, error) {
	path := filepath.Join(dir, "admin.kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: podpath-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: podpath-test
  context: {cluster: podpath-test, user: admin}
current-context: podpath-test
`, server, p.file("ca.crt"), p.file("admin.crt"), p.file("admin.key"))
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}
