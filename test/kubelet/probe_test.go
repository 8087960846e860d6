package kubelet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// dialIn opens a TCP connection from inside the network namespace at path
// (a pod's, the node's, the outside host's). The socket keeps the
// namespace it was made in, whichever thread uses it later; the process
// stays in its cgroup, the root one here, where the node's processes are.
func dialIn(netnsPath, addr string, timeout time.Duration) (net.Conn, error) {
	return dialWith(netnsPath, &net.Dialer{Timeout: timeout}, addr)
}

func dialWith(netnsPath string, d *net.Dialer, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		var err error
		c, err = d.Dial("tcp4", addr)
		return err
	})
	return c, err
}

// fetchFromPort is fetch over a connection from local port port, which an
// earlier connection may have used (SO_REUSEADDR): the same tuple again.
func fetchFromPort(netnsPath, addr string, port int, timeout time.Duration) (string, error) {
	d := &net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: port},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			if cerr := rc.Control(func(fd uintptr) {
				err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}); cerr != nil {
				return cerr
			}
			return err
		}}
	c, err := dialWith(netnsPath, d, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return get(c, timeout)
}

// fetch is one HTTP/1.0 GET / over a new connection made in the namespace
// at netnsPath; it returns the body (the web pods answer their name).
func fetch(netnsPath, addr string, timeout time.Duration) (string, error) {
	body, _, err := fetchFrom(netnsPath, addr, timeout)
	return body, err
}

// fetchFrom is fetch that also returns the connection's local port.
func fetchFrom(netnsPath, addr string, timeout time.Duration) (string, int, error) {
	c, err := dialIn(netnsPath, addr, timeout)
	if err != nil {
		return "", 0, err
	}
	defer c.Close()
	body, err := get(c, timeout)
	return body, c.LocalAddr().(*net.TCPAddr).Port, err
}

// get sends GET / on c and returns the body of a 200 answer.
func get(c net.Conn, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, _ := strings.Cut(string(b), "\r\n\r\n")
	if status, _, _ := strings.Cut(head, "\r\n"); !strings.Contains(status, " 200 ") {
		return "", fmt.Errorf("answer %q", status)
	}
	return strings.TrimSpace(body), nil
}

// prober opens new connections to one address in a loop and counts them
// per phase of the test: each connection must be answered.
type prober struct {
	name, netns, addr string

	// explain, when set, describes a failed connection from the
	// datapath's view (port: its local port, 0 when the connect failed).
	explain func(port int) string

	mu       sync.Mutex
	phase    string
	ok       map[string]int
	failed   map[string]int
	failures []string            // the first few, with their phase
	seen     map[string][]string // backends that answered, per phase
	// reused counts connections whose local port an earlier one had used
	// in the last ctClosedLifetime: its tuple's conntrack entry was alive.
	reused   map[string]int
	lastUsed map[int]time.Time
}

// ctClosedLifetime is how long the datapath keeps a closed TCP flow's
// conntrack entry (CT_LIFETIME_TCP_CLOSE).
const ctClosedLifetime = 10 * time.Second

func newProber(name, netnsPath, addr string) *prober {
	return &prober{name: name, netns: netnsPath, addr: addr,
		ok: map[string]int{}, failed: map[string]int{}, seen: map[string][]string{},
		reused: map[string]int{}, lastUsed: map[int]time.Time{}}
}

// run probes until ctx ends, about every 10 ms.
func (p *prober) run(ctx context.Context) {
	for ctx.Err() == nil {
		start := time.Now()
		body, port, err := fetchFrom(p.netns, p.addr, 2*time.Second)
		p.mu.Lock()
		last, used := p.lastUsed[port]
		reused := port != 0 && used && start.Sub(last) < ctClosedLifetime
		p.mu.Unlock()
		var why string
		if err != nil && p.explain != nil {
			why = p.explain(port)
		}
		p.mu.Lock()
		if err != nil {
			p.failed[p.phase]++
			if len(p.failures) < 20 {
				p.failures = append(p.failures, fmt.Sprintf("%s: %s %v after %v (local port reused: %v)%s", p.phase, start.Format("15:04:05.000"), err, time.Since(start).Round(time.Millisecond), reused, why))
			}
		} else {
			if reused {
				p.reused[p.phase]++
			}
			p.lastUsed[port] = start
			p.ok[p.phase]++
			if seen := p.seen[p.phase]; !slices.Contains(seen, body) {
				p.seen[p.phase] = append(seen, body)
			}
		}
		p.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
}

// setPhase starts counting under a new phase.
func (p *prober) setPhase(phase string) {
	p.mu.Lock()
	p.phase = phase
	p.mu.Unlock()
}

// phaseCounts is what one phase saw.
type phaseCounts struct {
	ok, failed, reused int
	backends           []string
}

func (p *prober) counts(phase string) phaseCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	backends := append([]string(nil), p.seen[phase]...)
	sort.Strings(backends)
	return phaseCounts{p.ok[phase], p.failed[phase], p.reused[phase], backends}
}

// total counts the failures of every phase.
func (p *prober) total() (failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.failed {
		failed += n
	}
	return failed
}

func (p *prober) failuresSeen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.failures...)
}

// attempt is one connection attempt to a frontend being removed.
type attempt struct {
	at  time.Duration // since the removal was sent
	err error         // nil: answered (connected)
}

// refused tells whether the connect failed at once: refused (RST) or
// unreachable (ICMP).
func (a attempt) refused() bool {
	return errors.Is(a.err, syscall.ECONNREFUSED) || errors.Is(a.err, syscall.EHOSTUNREACH) || errors.Is(a.err, syscall.ENETUNREACH)
}

// attempts connects to addr from the namespace at netnsPath every 20 ms
// (300 ms timeout each) until one is refused and for a second more, or
// until limit has passed without a refusal.
func attempts(netnsPath, addr string, since time.Time, limit time.Duration) []attempt {
	var out []attempt
	end := since.Add(limit)
	for time.Now().Before(end) {
		c, err := dialIn(netnsPath, addr, 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
		a := attempt{time.Since(since), err}
		if a.refused() && end.Sub(time.Now()) > time.Second {
			end = time.Now().Add(time.Second)
		}
		out = append(out, a)
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

// icmpCounters reads the Icmp line pair of /proc/net/snmp of the calling
// thread's network namespace into a map.
func icmpCounters() (map[string]int64, error) {
	b, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Icmp: ")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(rest)
			continue
		}
		out := map[string]int64{}
		for i, v := range strings.Fields(rest) {
			if i < len(names) {
				out[names[i]], _ = strconv.ParseInt(v, 10, 64)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("no Icmp counters in /proc/net/snmp")
}
