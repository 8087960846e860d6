package sim

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// maxDatagram is the largest UDP payload over IPv4.
const maxDatagram = 65507

// Datagram is one datagram a server received: where from, and its payload.
type Datagram struct {
	From netip.AddrPort
	Data []byte
}

// ServeUDPEcho listens on addr inside a namespace (do runs a function there:
// Pod.Do, Outside.Do, Node.Do) and sends every datagram back whole to where
// it came from. It also hands each one to the returned channel when there
// is room (16 are kept), so a test can see what arrived and from whom.
// Closing the connection stops it.
func ServeUDPEcho(do func(func() error) error, addr string) (net.PacketConn, <-chan Datagram, error) {
	var pc net.PacketConn
	if err := do(func() (err error) {
		pc, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		return nil, nil, err
	}
	got := make(chan Datagram, 16)
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- Datagram{From: from.(*net.UDPAddr).AddrPort(), Data: append([]byte(nil), buf[:n]...)}:
			default:
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc, got, nil
}

// ExchangeUDP sends msg from inside a namespace on a socket connected to
// addr, as a resolver does, and returns the first datagram that comes back.
// The kernel hands a connected socket only datagrams from addr itself, and
// reports an ICMP error about the flow as the read's error
// (syscall.ECONNREFUSED for port unreachable).
func ExchangeUDP(do func(func() error) error, addr string, msg []byte, timeout time.Duration) ([]byte, error) {
	var c net.Conn
	if err := do(func() (err error) {
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("send to %s: %w", addr, err)
	}
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("answer from %s: %w", addr, err)
	}
	return buf[:n], nil
}

// RoundTrip is what one datagram's exchange with a ServeUDPEcho server
// did.
type RoundTrip struct {
	Seen netip.AddrPort // the source the server saw
	Took time.Duration  // from sending to the whole answer
	// What changed in /proc/net/snmp (SNMP) on either side, such as
	// Ip.FragCreates, Ip.ReasmReqds and Ip.ReasmOKs.
	Client, Server map[string]int64
}

// RoundTripUDP sends msg from the client's namespace to addr with
// ExchangeUDP and checks that the server, a ServeUDPEcho in the server's
// namespace reporting on got, received it whole and that its echo came
// back whole from addr.
func RoundTripUDP(client, server func(func() error) error, got <-chan Datagram, addr string, msg []byte) (RoundTrip, error) {
	var rt RoundTrip
	c0, err := SNMP(client)
	if err != nil {
		return rt, err
	}
	s0, err := SNMP(server)
	if err != nil {
		return rt, err
	}
	start := time.Now()
	answer, err := ExchangeUDP(client, addr, msg, probeTimeout)
	rt.Took = time.Since(start)
	var d Datagram
	select {
	case d = <-got:
	default:
	}
	rt.Seen = d.From
	var serr error
	if rt.Client, serr = snmpSince(client, c0); serr != nil {
		return rt, serr
	}
	if rt.Server, serr = snmpSince(server, s0); serr != nil {
		return rt, serr
	}
	switch {
	case d.Data == nil && err != nil:
		return rt, fmt.Errorf("the server received nothing: %w", err)
	case !bytes.Equal(d.Data, msg):
		return rt, fmt.Errorf("the server received %d bytes from %s, want the %d sent", len(d.Data), d.From, len(msg))
	case err != nil:
		return rt, err
	case !bytes.Equal(answer, msg):
		return rt, fmt.Errorf("answer of %d bytes, want the %d sent back", len(answer), len(msg))
	}
	return rt, nil
}

// snmpSince is how much each SNMP counter of a namespace grew since before.
func snmpSince(do func(func() error) error, before map[string]int64) (map[string]int64, error) {
	now, err := SNMP(do)
	if err != nil {
		return nil, err
	}
	for k, v := range before {
		now[k] -= v
	}
	return now, nil
}

// Fragmented says whether the exchange went as fragments both ways: the
// sender's stack cut each datagram up (Ip.FragCreates) and the receiver's
// put it back together (Ip.ReasmOKs).
func (rt RoundTrip) Fragmented() error {
	for _, side := range []struct {
		name    string
		out, in map[string]int64
	}{{"request", rt.Client, rt.Server}, {"answer", rt.Server, rt.Client}} {
		if side.out["Ip.FragCreates"] < 2 || side.in["Ip.ReasmOKs"] < 1 {
			return fmt.Errorf("the %s was not fragmented and reassembled: %d fragments made, %d datagrams reassembled",
				side.name, side.out["Ip.FragCreates"], side.in["Ip.ReasmOKs"])
		}
	}
	return nil
}

func (rt RoundTrip) String() string {
	return fmt.Sprintf("round trip in %v; client: %d fragments made, %d datagrams reassembled from %d; server: %d made, %d reassembled from %d",
		rt.Took.Round(time.Microsecond),
		rt.Client["Ip.FragCreates"], rt.Client["Ip.ReasmOKs"], rt.Client["Ip.ReasmReqds"],
		rt.Server["Ip.FragCreates"], rt.Server["Ip.ReasmOKs"], rt.Server["Ip.ReasmReqds"])
}
