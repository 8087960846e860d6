package sim

import (
	"io"
	"net"
	"time"
)

// ServeTCP listens on addr inside a namespace (do runs a function there:
// Pod.Do, Outside.Do, Node.Do) and answers each connection, one at a time,
// with reply(conn), then closes it. Closing the listener stops it.
func ServeTCP(do func(func() error) error, addr string, reply func(net.Conn) string) (net.Listener, error) {
	var ln net.Listener
	if err := do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, reply(c))
			c.Close()
		}
	}()
	return ln, nil
}

// FetchTCP connects to addr from inside a namespace and reads what the
// server sends until it closes, all within timeout.
func FetchTCP(do func(func() error) error, addr string, timeout time.Duration) (string, error) {
	var out []byte
	err := do(func() error {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		out, err = io.ReadAll(c)
		return err
	})
	return string(out), err
}
