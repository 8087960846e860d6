package sim

import (
	"fmt"
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

// SendTCP connects to addr from inside a namespace, sends size bytes,
// closes its side and reads what the server answers until it closes, all
// within timeout.
func SendTCP(do func(func() error) error, addr string, size int, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(make([]byte, size)); err != nil {
		return "", fmt.Errorf("send: %w", err)
	}
	c.(*net.TCPConn).CloseWrite()
	out, err := io.ReadAll(c)
	if err != nil {
		return "", fmt.Errorf("answer: %w", err)
	}
	return string(out), nil
}

// CountReceived, as ServeTCP's reply, answers with how many bytes the
// client sent before it closed its side.
func CountReceived(c net.Conn) string {
	n, _ := io.Copy(io.Discard, c)
	return fmt.Sprint(n)
}
