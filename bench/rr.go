package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podpath/podpath/internal/sockwait"
	"golang.org/x/sys/unix"
)

// The request/response tests, netperf's TCP_RR and TCP_CRR done in Go with
// plain blocking sockets (no Go netpoller between the measurement and the
// kernel), client and server each on a thread inside its pod's namespace.
//
// TCP_RR: one connection, 1 byte each way, back to back.
// TCP_CRR: a new connection per transaction: connect, 1 byte each way,
// close. The client closes with SO_LINGER 0, so close sends RST and neither
// side keeps a TIME_WAIT socket: the ephemeral port is free again at once
// and a long run never exhausts the port range (the kernel's default
// 32768-60999 is left alone).

// ioTimeout bounds every blocking socket call, so a lost peer fails the
// measurement instead of hanging it.
const ioTimeout = 2 * time.Second

// runRR measures TCP_RR (crr false) or TCP_CRR (crr true) on every topology.
func (e *env) runRR(ctx context.Context, crr bool) error {
	fam, unit := famRR, "transactions/s"
	if crr {
		fam, unit = famCRR, "connections/s"
	}
	topos, err := e.buildTopologies(ctx)
	if err != nil {
		return err
	}
	for rep := range e.cfg.Reps {
		for _, t := range rotate(topos, rep) {
			var r rrResult
			ev, err := measurePath(t, func() (err error) {
				r, err = requestResponse(ctx, t, crr, e.cfg.RRWarmup, e.cfg.RRTime)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s %s: %w", fam, t.contender, err)
			}
			m := e.res.record(fam, "rate", t.contender, unit, higher, r.rate)
			m.addExtra("transactions", r.count)
			ev.record(m, t)
			e.res.record(fam, "p50", t.contender, "µs", lower, r.p50)
			e.res.record(fam, "p99", t.contender, "µs", lower, r.p99)
			slog.Info(fam, "rep", rep+1, "contender", t.contender, "rate", fmt.Sprintf("%.0f", r.rate),
				"p50_us", fmt.Sprintf("%.1f", r.p50), "p99_us", fmt.Sprintf("%.1f", r.p99))
			if t.traced != nil {
				if err := e.measureTraced(ctx, fam, unit, t, crr, rep); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// measureTraced measures t again with podpath monitor --trace following
// the client, right after t itself (paired by repetition): the cost of a
// trace event per packet and hook, and of the monitor reading them.
func (e *env) measureTraced(ctx context.Context, fam, unit string, t *topology, crr bool, rep int) error {
	stop, err := t.traced(ctx)
	if err != nil {
		return fmt.Errorf("%s: start podpath monitor --trace: %w", fam, err)
	}
	var r rrResult
	ev, err := measurePath(t, func() (err error) {
		r, err = requestResponse(ctx, t, crr, e.cfg.RRWarmup, e.cfg.RRTime)
		return err
	})
	if serr := stop(); err == nil && serr != nil {
		err = fmt.Errorf("stop podpath monitor: %w", serr)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", fam, cPodpathTraced, err)
	}
	m := e.res.record(fam, "rate", cPodpathTraced, unit, higher, r.rate)
	m.addExtra("transactions", r.count)
	ev.record(m, t)
	e.res.record(fam, "p50", cPodpathTraced, "µs", lower, r.p50)
	e.res.record(fam, "p99", cPodpathTraced, "µs", lower, r.p99)
	slog.Info(fam, "rep", rep+1, "contender", cPodpathTraced, "rate", fmt.Sprintf("%.0f", r.rate))
	return nil
}

// rrKind is the metric prefix of TCP_RR ("rr") or TCP_CRR ("crr").
func rrKind(crr bool) string {
	if crr {
		return "crr"
	}
	return "rr"
}

// measureRequestResponse runs one TCP_RR or TCP_CRR on t and records fam's
// <kind>_rate (with its evidence, the client address the server saw and,
// for TCP_CRR, the connections that failed), <kind>_p50 and <kind>_p99;
// before are t's further counters as they were, returned as they are now.
func (e *env) measureRequestResponse(ctx context.Context, fam string, t *topology, crr bool, rep int, before map[string]uint64) (rrResult, map[string]uint64, error) {
	kind, unit := rrKind(crr), rrUnit(crr)
	var r rrResult
	ev, err := measurePath(t, func() (err error) {
		r, err = requestResponse(ctx, t, crr, e.cfg.RRWarmup, e.cfg.RRTime)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return r, before, ctx.Err()
		}
		now := t.extras()
		err = fmt.Errorf("%s %s %s: %w (datapath counters that rose: %v)", fam, kind, t.contender, err, rose(before, now))
		e.res.recordFailure(fam, t.contender, unit, higher, err, kind+"_rate")
		e.res.recordFailure(fam, t.contender, "µs", lower, err, kind+"_p50", kind+"_p99")
		return r, now, nil
	}
	m := e.res.record(fam, kind+"_rate", t.contender, unit, higher, r.rate)
	m.addExtra("transactions", r.count)
	if crr {
		m.addExtra("failed_connections", r.failed)
		e.noteFailures(fam, t.contender, rep, r.failed)
	}
	m.addExtra("server_saw_client", r.peer.String())
	ev.record(m, t)
	now := t.recordExtras(m, before)
	e.res.record(fam, kind+"_p50", t.contender, "µs", lower, r.p50)
	e.res.record(fam, kind+"_p99", t.contender, "µs", lower, r.p99)
	return r, now, nil
}

// rrUnit is the unit of a TCP_RR or TCP_CRR rate.
func rrUnit(crr bool) string {
	if crr {
		return "connections/s"
	}
	return "transactions/s"
}

type rrResult struct {
	count    int
	rate     float64 // per second
	p50, p99 float64 // µs
	// peer is the client address the server saw on its first connection;
	// otherPeers counts connections that came from any other address.
	peer       netip.Addr
	otherPeers int
	// failed counts connections that could not be set up (TCP_CRR on a
	// topology that tolerates it); their time is in the rate.
	failed int
}

// requestResponse runs one TCP_RR or TCP_CRR measurement: warm-up, then a
// fixed measured duration.
func requestResponse(ctx context.Context, t *topology, crr bool, warmup, dur time.Duration) (rrResult, error) {
	srv, err := startServer(t, 1)
	if err != nil {
		return rrResult{}, err
	}
	defer srv.stop()

	var r rrResult
	err = t.client.Do(func() error {
		if t.cpus != nil {
			if err := pinThread(t.cpus.client); err != nil {
				return err
			}
		}
		var err error
		if crr {
			r, err = crrClient(ctx, srv.dst, warmup, dur, t.connectFailuresOK)
		} else {
			r, err = rrClient(ctx, srv.dst, warmup, dur)
		}
		return err
	})
	if err != nil {
		return r, err
	}
	peers, err := srv.stop()
	if err != nil {
		return r, fmt.Errorf("server: %w", err)
	}
	r.peer, r.otherPeers = peers.first, peers.others
	return r, peers.check(t)
}

// rrServer is the request/response server of one measurement: workers
// threads answering on one listening socket in the server's namespace.
type rrServer struct {
	// dst is where the client connects: the topology's destination and
	// port.
	dst      *unix.SockaddrInet4
	lfd      int
	done     atomic.Bool
	wg       sync.WaitGroup
	errs     []error
	peers    []peerLog
	stopOnce sync.Once
	merged   peerLog
	err      error
}

// startServer listens in t's server namespace and answers with workers
// threads: one serves one connection at a time, so concurrent clients need
// as many.
func startServer(t *topology, workers int) (*rrServer, error) {
	s := &rrServer{errs: make([]error, workers), peers: make([]peerLog, workers)}
	var port int
	err := t.server.Do(func() error {
		var err error
		s.lfd, port, err = listen(t.server.IP.As4(), t.listenPort)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen in %s: %w", t.server.Name, err)
	}
	if t.dstPort != 0 {
		port = t.dstPort
	}
	s.dst = &unix.SockaddrInet4{Addr: t.dst.As4(), Port: port}
	for i := range workers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			// A pinned thread is locked and never unlocked: it exits
			// with its goroutine instead of serving another one.
			if t.cpus != nil {
				if s.errs[i] = pinThread(t.cpus.server); s.errs[i] != nil {
					return
				}
			}
			s.errs[i] = serve(s.lfd, &s.done, &s.peers[i])
		}()
	}
	return s, nil
}

// stop ends the server (once; later calls return the same) and returns
// what its workers saw and the first error one of them met.
func (s *rrServer) stop() (peerLog, error) {
	s.stopOnce.Do(func() {
		s.done.Store(true)
		unix.Shutdown(s.lfd, unix.SHUT_RDWR) // wakes a blocked accept
		s.wg.Wait()
		unix.Close(s.lfd)
		for i, p := range s.peers {
			s.merged.merge(p)
			if s.err == nil {
				s.err = s.errs[i]
			}
		}
	})
	return s.merged, s.err
}

// peerLog is what the server saw as its clients' address.
type peerLog struct {
	first  netip.Addr
	others int
}

// check says whether every connection came from the address t wants the
// server to see (when it wants one).
func (l peerLog) check(t *topology) error {
	if t.wantPeer.IsValid() && (l.first != t.wantPeer || l.others > 0) {
		return fmt.Errorf("%s: the server saw the client as %s (%d connections from elsewhere), want %s",
			t.contender, l.first, l.others, t.wantPeer)
	}
	return nil
}

func (l *peerLog) add(sa unix.Sockaddr) {
	a, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		l.others++
		return
	}
	l.addAddr(netip.AddrFrom4(a.Addr))
}

func (l *peerLog) addAddr(addr netip.Addr) {
	switch {
	case !l.first.IsValid():
		l.first = addr
	case addr != l.first:
		l.others++
	}
}

// merge adds another worker's log: its first address counts as one more
// connection from elsewhere when it differs from this one's.
func (l *peerLog) merge(o peerLog) {
	l.others += o.others
	if o.first.IsValid() {
		l.addAddr(o.first)
	}
}

// listen opens a listening TCP socket on addr and port (0: any free one) in
// the calling thread's namespace.
func listen(addr [4]byte, port int) (fd, boundPort int, err error) {
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	fail := func(err error) (int, int, error) { unix.Close(fd); return -1, 0, err }
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail(err)
	}
	if err := setTimeouts(fd); err != nil {
		return fail(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr, Port: port}); err != nil {
		return fail(err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		return fail(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port, nil
}

// serve answers every byte with one byte, one connection at a time, until
// stop is set, and notes where each connection came from. A connection ends
// when the client closes or resets it.
func serve(lfd int, stop *atomic.Bool, peers *peerLog) error {
	buf := make([]byte, 1)
	for !stop.Load() {
		cfd, sa, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) || stop.Load() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		peers.add(sa)
		if err := tuneSocket(cfd); err != nil {
			unix.Close(cfd)
			return err
		}
		for {
			n, err := readFull(cfd, buf)
			if n == 0 || err != nil {
				break // EOF, RST (CRR) or timeout: next connection
			}
			if err := writeFull(cfd, buf); err != nil {
				break
			}
		}
		unix.Close(cfd)
	}
	return nil
}

// rrClient: one connection, ping-pong until the time is up.
func rrClient(ctx context.Context, dst *unix.SockaddrInet4, warmup, dur time.Duration) (rrResult, error) {
	fd, err := dial(dst, false)
	if err != nil {
		return rrResult{}, err
	}
	defer unix.Close(fd)
	buf := []byte{'x'}
	samples := make([]float64, 0, 1<<18)
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+dur)
	var measured time.Time
	for i := 0; ; i++ {
		t0 := time.Now()
		if t0.After(end) {
			break
		}
		if i%1024 == 0 && ctx.Err() != nil {
			return rrResult{}, ctx.Err()
		}
		if err := writeFull(fd, buf); err != nil {
			return rrResult{}, fmt.Errorf("request: %w", err)
		}
		if n, err := readFull(fd, buf); err != nil || n != 1 {
			return rrResult{}, fmt.Errorf("response: %d bytes, %v", n, err)
		}
		if t0.After(measureFrom) {
			if measured.IsZero() {
				measured = t0
			}
			samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	return summarize(samples, time.Since(measured))
}

// crrClient: a new connection per transaction, closed with RST. With
// tolerate, a connection that cannot be set up or answered within
// ioTimeout is counted and the next one tried until the time is up; when
// none succeeded the rate is 0.
func crrClient(ctx context.Context, dst *unix.SockaddrInet4, warmup, dur time.Duration, tolerate bool) (rrResult, error) {
	buf := []byte{'x'}
	failed := 0
	samples := make([]float64, 0, 1<<17)
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+dur)
	var measured time.Time
	for i := 0; ; i++ {
		t0 := time.Now()
		if t0.After(end) {
			break
		}
		if i%256 == 0 && ctx.Err() != nil {
			return rrResult{}, ctx.Err()
		}
		err := crrOnce(dst, buf)
		if err != nil && tolerate {
			failed++
			slog.Warn("TCP_CRR: connection failed, going on", "dst", fmt.Sprintf("%d.%d.%d.%d:%d", dst.Addr[0], dst.Addr[1], dst.Addr[2], dst.Addr[3], dst.Port), "err", err)
			continue
		}
		if err != nil {
			return rrResult{}, err
		}
		if t0.After(measureFrom) {
			if measured.IsZero() {
				measured = t0
			}
			samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	if len(samples) == 0 && failed > 0 {
		return rrResult{failed: failed}, nil
	}
	r, err := summarize(samples, time.Since(measured))
	r.failed = failed
	return r, err
}

// crrOnce is one TCP_CRR transaction: connect, 1 byte each way, close
// with RST.
func crrOnce(dst *unix.SockaddrInet4, buf []byte) error {
	fd, err := dial(dst, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := writeFull(fd, buf); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if n, err := readFull(fd, buf); err != nil || n != 1 {
		return fmt.Errorf("response: %d bytes, %v", n, err)
	}
	return nil
}

func summarize(samples []float64, elapsed time.Duration) (rrResult, error) {
	if len(samples) == 0 || elapsed <= 0 {
		return rrResult{}, errors.New("no transactions measured")
	}
	slices.Sort(samples)
	return rrResult{
		count: len(samples),
		rate:  float64(len(samples)) / elapsed.Seconds(),
		p50:   percentile(samples, 50),
		p99:   percentile(samples, 99),
	}, nil
}

// dial connects a blocking TCP socket to dst from the calling thread's
// namespace; abortive close (SO_LINGER 0) for the CRR client.
func dial(dst *unix.SockaddrInet4, abortiveClose bool) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if abortiveClose {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := tuneSocket(fd); err != nil {
		unix.Close(fd)
		return -1, err
	}
	err = unix.Connect(fd, dst)
	if errors.Is(err, unix.EINTR) {
		// The connection goes on in the background; wait for its outcome.
		err = sockwait.Connected(fd, ioTimeout)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %d.%d.%d.%d:%d: %w", dst.Addr[0], dst.Addr[1], dst.Addr[2], dst.Addr[3], dst.Port, err)
	}
	return fd, nil
}

// tuneSocket: no Nagle (1-byte messages go out at once), bounded blocking.
func tuneSocket(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return fmt.Errorf("TCP_NODELAY: %w", err)
	}
	return setTimeouts(fd)
}

func setTimeouts(fd int) error {
	tv := unix.NsecToTimeval(ioTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

// readFull reads len(b) bytes, retrying after signals; n is 0 at EOF.
func readFull(fd int, b []byte) (int, error) {
	got := 0
	for got < len(b) {
		n, err := unix.Read(fd, b[got:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return got, err
		}
		if n == 0 {
			return got, nil
		}
		got += n
	}
	return got, nil
}

func writeFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
