package socklb_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/podpath/podpath/internal/sockwait"
	"golang.org/x/sys/unix"
)

// The client process: this test binary started again with clientEnv set to
// a clientRequest. Everything it does is a plain system call on one locked
// thread, so the network namespace is the one entered and the errors are
// the kernel's own.

const clientEnv = "PODPATH_SOCKLB_CLIENT"

// clientTimeout bounds every connect, send and receive of the client.
const clientTimeout = 2 * time.Second

type clientRequest struct {
	Netns string     `json:"netns"` // network namespace to enter ("": stay)
	Ops   []clientOp `json:"ops"`
}

// Kinds of client operation.
const (
	opTCP          = "tcp"           // Count connections, each reads the server's answer
	opUDP          = "udp"           // one unconnected socket, Count sendto/recvfrom
	opUDPConnected = "udp-connected" // one connected socket, Count send/recvfrom
)

type clientOp struct {
	Kind  string `json:"kind"`
	Addr  string `json:"addr"` // ip:port
	Count int    `json:"count"`
}

type clientResponse struct {
	Cgroup  string     `json:"cgroup"` // from /proc/self/cgroup, "0::" line
	Results []opResult `json:"results"`
}

// opResult is what one operation saw, one exchange per Count.
type opResult struct {
	Exchanges []exchange `json:"exchanges"`
}

type exchange struct {
	Errno string `json:"errno,omitempty"` // e.g. "EPERM"; empty on success
	Step  string `json:"step,omitempty"`  // the call that failed
	Peer  string `json:"peer,omitempty"`  // getpeername of a connected socket
	From  string `json:"from,omitempty"`  // source of a UDP reply (recvfrom)
	Reply string `json:"reply,omitempty"` // the server's answer: "<pod> <client>"
}

// served splits the server's answer into the pod's name and the client
// address the pod saw.
func (e exchange) served() (pod string, client netip.AddrPort) {
	pod, c, _ := strings.Cut(e.Reply, " ")
	client, _ = netip.ParseAddrPort(c)
	return pod, client
}

func clientMain(req string) int {
	var r clientRequest
	if err := json.Unmarshal([]byte(req), &r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	runtime.LockOSThread()
	if r.Netns != "" {
		fd, err := unix.Open(r.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "enter netns %s: %v\n", r.Netns, err)
			return 2
		}
	}
	resp := clientResponse{Cgroup: ownCgroup()}
	for _, op := range r.Ops {
		res, err := runOp(op)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		resp.Results = append(resp.Results, res)
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// ownCgroup is the process's cgroup v2 path.
func ownCgroup() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "unreadable: " + err.Error()
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return "none"
}

func runOp(op clientOp) (opResult, error) {
	ap, err := netip.ParseAddrPort(op.Addr)
	if err != nil {
		return opResult{}, err
	}
	to := &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	var res opResult
	switch op.Kind {
	case opTCP:
		for range op.Count {
			res.Exchanges = append(res.Exchanges, tcpExchange(to))
		}
	case opUDP, opUDPConnected:
		res.Exchanges = udpExchanges(to, op.Count, op.Kind == opUDPConnected)
	default:
		return res, fmt.Errorf("unknown operation %q", op.Kind)
	}
	return res, nil
}

func failed(step string, err error) exchange {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return exchange{Step: step, Errno: unix.ErrnoName(errno)}
	}
	return exchange{Step: step, Errno: err.Error()}
}

func socket(typ int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(clientTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

func sockaddrString(sa unix.Sockaddr) string {
	if in4, ok := sa.(*unix.SockaddrInet4); ok {
		return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String()
	}
	return fmt.Sprintf("%v", sa)
}

// tcpExchange connects (a blocking connect that gives up after
// clientTimeout), asks the kernel for the peer and reads the server's
// answer to the end.
func tcpExchange(to *unix.SockaddrInet4) exchange {
	fd, err := socket(unix.SOCK_STREAM)
	if err != nil {
		return failed("socket", err)
	}
	defer unix.Close(fd)
	if err := connect(fd, to); err != nil {
		return failed("connect", err)
	}
	var e exchange
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return failed("getpeername", err)
	}
	e.Peer = sockaddrString(peer)
	buf := make([]byte, 256)
	for {
		n, err := sockwait.Retry(func() (int, error) { return unix.Read(fd, buf) })
		if err != nil {
			return failed("read", err)
		}
		if n == 0 {
			return e
		}
		e.Reply += string(buf[:n])
	}
}

// udpExchanges sends count datagrams from one socket, each followed by
// receiving the reply; connected sockets connect first and send without an
// address.
func udpExchanges(to *unix.SockaddrInet4, count int, connected bool) []exchange {
	fd, err := socket(unix.SOCK_DGRAM)
	if err != nil {
		return []exchange{failed("socket", err)}
	}
	defer unix.Close(fd)
	var peer string
	if connected {
		if err := connect(fd, to); err != nil {
			return []exchange{failed("connect", err)}
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			return []exchange{failed("getpeername", err)}
		}
		peer = sockaddrString(sa)
	}
	var out []exchange
	buf := make([]byte, 256)
	for i := range count {
		msg := []byte(fmt.Sprintf("datagram %d", i))
		_, err = sockwait.Retry(func() (struct{}, error) {
			if connected {
				return struct{}{}, unix.Send(fd, msg, 0)
			}
			return struct{}{}, unix.Sendto(fd, msg, 0, to)
		})
		if err != nil {
			out = append(out, failed("send", err))
			continue
		}
		var from unix.Sockaddr
		n, err := sockwait.Retry(func() (n int, err error) {
			n, from, err = unix.Recvfrom(fd, buf, 0)
			return n, err
		})
		if err != nil {
			out = append(out, failed("recvfrom", err))
			continue
		}
		out = append(out, exchange{Peer: peer, From: sockaddrString(from), Reply: string(buf[:n])})
	}
	return out
}

// connect is a blocking connect that a signal cannot fail: an interrupted
// TCP connect carries on in the kernel, and its outcome is waited for.
func connect(fd int, to unix.Sockaddr) error {
	err := unix.Connect(fd, to)
	if errors.Is(err, unix.EINTR) {
		err = sockwait.Connected(fd, clientTimeout)
	}
	return err
}
