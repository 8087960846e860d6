package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// iperfPort is where every iperf3 server listens (each in its own netns).
const iperfPort = 5201

// cpuPin puts a measurement's client on one CPU and its server on another.
// Left to the scheduler, a single stream's client and server can share a
// CPU, where the receiver reads only when the sender yields and so cuts
// its window: throughput then depends on scheduling luck, not on the path.
// Pinning removes that for every contender alike. A topology that sets one
// gets it for iperf3 (taskset) and for the request/response client and
// server threads (pinThread).
type cpuPin struct{ client, server int }

// pinnedCPUs picks the first two CPUs this process may run on: the client's
// and the server's.
func pinnedCPUs() (*cpuPin, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("CPU affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		return nil, fmt.Errorf("client and server need a CPU each; this process may run on %d", set.Count())
	}
	return &cpuPin{client: cpus[0], server: cpus[1]}, nil
}

// pinThread binds the calling goroutine to its thread and that thread to
// cpu. The thread is never unlocked: it ends with the goroutine (or with
// the ns.Do that runs it) instead of going back to the runtime's pool with
// its narrowed affinity.
func pinThread(cpu int) error {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}

// taskset prefixes a command with taskset when the topology pins it.
func taskset(pin *cpuPin, server bool, name string, args ...string) (string, []string) {
	if pin == nil {
		return name, args
	}
	cpu := pin.client
	if server {
		cpu = pin.server
	}
	return "taskset", append([]string{"--cpu-list", strconv.Itoa(cpu), name}, args...)
}

// runStream measures single-stream TCP throughput, client pod to server
// pod, with iperf3.
func (e *env) runStream(ctx context.Context) error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 not found (apt-get install iperf3): %w", err)
	}
	topos, err := e.buildTopologies(ctx)
	if err != nil {
		return err
	}
	for rep := range e.cfg.Reps {
		for _, t := range rotate(topos, rep) {
			var r iperfResult
			ev, err := measurePath(t, func() (err error) {
				r, err = iperf(ctx, t, e.cfg.StreamTime, e.cfg.StreamOmit)
				return err
			})
			if err != nil {
				return err
			}
			m := e.res.record(famStream, "throughput", t.contender, "Gbit/s", higher, r.bitsPerSecond/1e9)
			m.addExtra("retransmits", r.retransmits)
			m.addExtra("sender_cpu_percent", r.senderCPU)
			m.addExtra("receiver_cpu_percent", r.receiverCPU)
			ev.record(m, t)
			slog.Info("tcp_stream", "rep", rep+1, "contender", t.contender, "Gbit/s", fmt.Sprintf("%.2f", r.bitsPerSecond/1e9),
				"retransmits", r.retransmits, "backlog_drops", ev.backlogDrops)
		}
	}
	return nil
}

// measureThroughput runs one iperf3 test on t and records it as fam's
// "throughput" with its evidence and the further counters that rose since
// before, which it returns as they are now, for the next measurement.
func (e *env) measureThroughput(ctx context.Context, fam string, t *topology, before map[string]uint64) (iperfResult, map[string]uint64, error) {
	var r iperfResult
	ev, err := measurePath(t, func() (err error) {
		r, err = iperf(ctx, t, e.cfg.StreamTime, e.cfg.StreamOmit)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return r, before, ctx.Err()
		}
		now := t.extras()
		e.res.recordFailure(fam, t.contender, "Gbit/s", higher,
			fmt.Errorf("%s throughput %s: %w (datapath counters that rose: %v)", fam, t.contender, err, rose(before, now)), "throughput")
		return r, now, nil
	}
	m := e.res.record(fam, "throughput", t.contender, "Gbit/s", higher, r.bitsPerSecond/1e9)
	m.addExtra("retransmits", r.retransmits)
	ev.record(m, t)
	return r, t.recordExtras(m, before), nil
}

type iperfResult struct {
	bitsPerSecond          float64
	retransmits            int
	senderCPU, receiverCPU float64
}

// iperf runs one iperf3 test: a one-off server in the server pod, the
// client in the client pod; the first omit seconds are warm-up, not counted.
func iperf(ctx context.Context, t *topology, dur, omit time.Duration) (iperfResult, error) {
	ctx, cancel := context.WithTimeout(ctx, dur+omit+30*time.Second)
	defer cancel()
	srvArgs := []string{"--server", "--one-off", "--bind", t.server.IP.String(), "--port", strconv.Itoa(iperfPort)}
	if t.wantPeer.IsValid() {
		// In JSON, the report the client fetches (--get-server-output)
		// names the address the server saw.
		srvArgs = append(srvArgs, "--json")
	}
	name, args := taskset(t.cpus, true, "iperf3", srvArgs...)
	srv := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + t.server.NS.Path(), name}, args...)...)
	var srvErr strings.Builder
	srv.Stderr = &srvErr
	if err := srv.Start(); err != nil {
		return iperfResult{}, fmt.Errorf("start iperf3 server: %w", err)
	}
	stopSrv := cleanup.add("iperf3 server", func() error {
		srv.Process.Kill()
		srv.Wait()
		return nil
	})
	defer stopSrv()
	if err := waitListening(ctx, srv.Process.Pid, iperfPort); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 server in %s: %w %s", t.server.Name, err, srvErr.String())
	}

	clientArgs := []string{"--client", t.dst.String(), "--port", strconv.Itoa(iperfPort),
		"--time", strconv.Itoa(int(dur.Seconds())), "--omit", strconv.Itoa(int(omit.Seconds())), "--json"}
	if t.wantPeer.IsValid() {
		clientArgs = append(clientArgs, "--get-server-output")
	}
	name, args = taskset(t.cpus, false, "iperf3", clientArgs...)
	out, err := runIn(ctx, t.client.NS, "", name, args...)
	if err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 client %s -> %s: %w %s", t.client.Name, t.dst, err, iperfError(out))
	}
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			CPU struct {
				HostTotal   float64 `json:"host_total"`
				RemoteTotal float64 `json:"remote_total"`
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
		Server struct {
			Start struct {
				Connected []struct {
					RemoteHost string `json:"remote_host"`
				} `json:"connected"`
			} `json:"start"`
		} `json:"server_output_json"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return iperfResult{}, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if rep.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	if rep.End.SumReceived.BitsPerSecond <= 0 {
		return iperfResult{}, fmt.Errorf("iperf3 %s: no throughput reported", t.contender)
	}
	if t.wantPeer.IsValid() {
		saw := "no connection"
		if c := rep.Server.Start.Connected; len(c) > 0 {
			saw = c[0].RemoteHost
		}
		if saw != t.wantPeer.String() {
			return iperfResult{}, fmt.Errorf("iperf3 %s: the server saw the client as %s, want %s", t.contender, saw, t.wantPeer)
		}
	}
	return iperfResult{
		bitsPerSecond: rep.End.SumReceived.BitsPerSecond,
		retransmits:   rep.End.SumSent.Retransmits,
		senderCPU:     rep.End.CPU.HostTotal,
		receiverCPU:   rep.End.CPU.RemoteTotal,
	}, nil
}

func iperfError(out string) string {
	var r struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(out), &r) == nil {
		return r.Error
	}
	return ""
}

// waitListening waits until process pid has a TCP socket listening on port:
// /proc/<pid>/net/tcp lists the sockets of that process's namespace.
func waitListening(ctx context.Context, pid, port int) error {
	want := fmt.Sprintf(":%04X", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid)); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				fs := strings.Fields(sc.Text())
				if len(fs) > 3 && strings.HasSuffix(fs[1], want) && fs[3] == "0A" {
					f.Close()
					return nil
				}
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("not listening on port %d after 10s", port)
}
