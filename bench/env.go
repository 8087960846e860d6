package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
)

// env is one run: its configuration, the results so far, and the
// pod-to-pod topologies shared by the stream, RR and CRR families.
type env struct {
	cfg    config
	srcDir string
	res    *results
	topos  []*topology
	// vethGRO turns GRO on for every veth of the pod-to-pod topologies.
	vethGRO bool
}

func (e *env) runFamily(ctx context.Context, fam string) error {
	switch fam {
	case famStream:
		return e.runStream(ctx)
	case famRR:
		return e.runRR(ctx, false)
	case famCRR:
		return e.runRR(ctx, true)
	case famProgRun:
		return e.runProgRun(ctx)
	case famCNI:
		return e.runCNI(ctx)
	case famMemory:
		return e.runMemory(ctx)
	case famServices:
		return e.runServices(ctx)
	case famSNAT:
		return e.runSNAT(ctx)
	case famCrossNode:
		return e.runCrossNode(ctx)
	case famControlPlane:
		return e.runControlPlane(ctx)
	case famSoak:
		return e.runSoak(ctx)
	case famPolicy:
		return e.runPolicy(ctx)
	}
	return fmt.Errorf("unknown family %s", fam)
}

func (e *env) close() error { return e.closeTopologies() }

// evidence is what a pod-to-pod measurement left behind besides its
// figure: how much the contender's path counter rose, and how many packets
// the kernel dropped machine-wide from its per-CPU backlog queues
// (/proc/net/softnet_stat; veth hands packets over through them, and they
// overflow when the CPU that drains them is busy elsewhere).
type evidence struct {
	path, replyPath uint64
	backlogDrops    uint64
	softirqSqueezes uint64
	// serverDrops are the server namespace's TcpExt drop counters that
	// rose; clientLoss the client's loss-recovery counters that rose.
	serverDrops, clientLoss map[string]uint64
}

// record adds the evidence to a measurement's repetition.
func (ev evidence) record(m *measurement, t *topology) {
	if t.path != nil {
		m.addExtra(t.path.name, ev.path)
	}
	if t.replyPath != nil {
		m.addExtra(t.replyPath.name, ev.replyPath)
	}
	m.addExtra("softnet_backlog_drops", ev.backlogDrops)
	m.addExtra("softnet_time_squeezes", ev.softirqSqueezes)
	m.addExtra("server_tcp_drops", ev.serverDrops)
	m.addExtra("client_tcp_loss_recovery", ev.clientLoss)
}

// add sums another measurement's evidence into ev: the turns of one
// contender's repetition.
func (ev *evidence) add(o evidence) {
	ev.path += o.path
	ev.replyPath += o.replyPath
	ev.backlogDrops += o.backlogDrops
	ev.softirqSqueezes += o.softirqSqueezes
	ev.serverDrops = addCounts(ev.serverDrops, o.serverDrops)
	ev.clientLoss = addCounts(ev.clientLoss, o.clientLoss)
}

// addCounts adds b's counts to a's.
func addCounts(a, b map[string]uint64) map[string]uint64 {
	if len(b) == 0 {
		return a
	}
	if a == nil {
		a = map[string]uint64{}
	}
	for k, v := range b {
		a[k] += v
	}
	return a
}

// measurePath runs fn on a topology and collects the evidence; a required
// path counter (or reply path counter) that did not rise means the traffic
// did not take the contender's path, and the measurement is void.
func measurePath(t *topology, fn func() error) (evidence, error) {
	counters := []*pathCounter{t.path, t.replyPath}
	var before [2]uint64
	for i, c := range counters {
		if c == nil {
			continue
		}
		var err error
		if before[i], err = c.read(); err != nil {
			return evidence{}, fmt.Errorf("%s: read %s: %w", t.contender, c.name, err)
		}
	}
	drops0, squeeze0 := softnetStat()
	srv0, cli0 := tcpExt(t.server, tcpDropKeys), tcpExt(t.client, tcpLossKeys)
	if err := fn(); err != nil {
		return evidence{}, err
	}
	drops1, squeeze1 := softnetStat()
	ev := evidence{backlogDrops: drops1 - drops0, softirqSqueezes: squeeze1 - squeeze0,
		serverDrops: rose(srv0, tcpExt(t.server, tcpDropKeys)),
		clientLoss:  rose(cli0, tcpExt(t.client, tcpLossKeys))}
	rise := []*uint64{&ev.path, &ev.replyPath}
	for i, c := range counters {
		if c == nil {
			continue
		}
		after, err := c.read()
		if err != nil {
			return ev, fmt.Errorf("%s: read %s: %w", t.contender, c.name, err)
		}
		*rise[i] = after - before[i]
		if *rise[i] == 0 && c.required {
			return ev, fmt.Errorf("%s: %s did not rise: the traffic did not take %s's path", t.contender, c.name, t.contender)
		}
		slog.Debug("path counter", "contender", t.contender, c.name, *rise[i])
	}
	return ev, nil
}

// softnetStat sums the dropped and time_squeeze columns of
// /proc/net/softnet_stat over CPUs.
func softnetStat() (dropped, squeezed uint64) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		d, _ := strconv.ParseUint(f[1], 16, 64)
		q, _ := strconv.ParseUint(f[2], 16, 64)
		dropped += d
		squeezed += q
	}
	return dropped, squeezed
}

// tcpDropKeys are the TcpExt counters that count segments a receiving
// socket threw away.
var tcpDropKeys = []string{"TCPBacklogDrop", "TCPRcvQDrop", "TCPZeroWindowDrop", "TCPOFODrop", "PruneCalled", "TCPRcvCollapsed"}

// tcpLossKeys are the TcpExt counters of a sender's loss recovery: what
// made it retransmit.
var tcpLossKeys = []string{"TCPLossProbes", "TCPTimeouts", "TCPSpuriousRTOs", "TCPFastRetrans", "TCPSlowStartRetrans", "TCPLostRetransmit", "TCPDSACKRecv", "TCPSACKReorder"}

func rose(before, after map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range after {
		if v > before[k] {
			out[k] = v - before[k]
		}
	}
	return out
}

// tcpExt reads TcpExt counters of the endpoint's namespace
// (/proc/thread-self/net/netstat from a thread inside it).
func tcpExt(p endpoint, keys []string) map[string]uint64 {
	out := map[string]uint64{}
	p.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
				continue
			}
			for j, n := range names {
				for _, k := range keys {
					if n == k {
						out[k], _ = strconv.ParseUint(values[j], 10, 64)
					}
				}
			}
		}
		return nil
	})
	return out
}
