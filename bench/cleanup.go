package main

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/podpath/podpath/loader"
	"golang.org/x/sys/unix"
)

// cleanup holds everything the run made and must remove: namespaces, pins,
// directories, processes. Normal code removes what it made as it goes; a
// second Ctrl-C runs whatever is left.
var cleanup cleanupStack

type cleanupStack struct {
	mu   sync.Mutex
	next int
	fns  map[int]cleanupEntry
}

type cleanupEntry struct {
	what string
	fn   func() error
}

// add registers fn and returns a function that runs it once and forgets
// it. Call the returned function to remove the thing when done with it.
func (c *cleanupStack) add(what string, fn func() error) func() error {
	c.mu.Lock()
	if c.fns == nil {
		c.fns = map[int]cleanupEntry{}
	}
	id := c.next
	c.next++
	c.fns[id] = cleanupEntry{what, fn}
	c.mu.Unlock()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			c.mu.Lock()
			e, ok := c.fns[id]
			delete(c.fns, id)
			c.mu.Unlock()
			if ok {
				err = e.fn()
			}
		})
		return err
	}
}

// runAll runs every registered function, newest first.
func (c *cleanupStack) runAll() {
	for {
		c.mu.Lock()
		id := -1
		for k := range c.fns {
			if k > id {
				id = k
			}
		}
		if id < 0 {
			c.mu.Unlock()
			return
		}
		e := c.fns[id]
		delete(c.fns, id)
		c.mu.Unlock()
		if err := e.fn(); err != nil {
			slog.Warn("cleanup", "what", e.what, "err", err)
		}
	}
}

// Everything this program names starts with one of these and ends in
// -<pid>: sim's namespaces "pp-bench-...-<pid>", its pin roots
// "podpath-sim-bench-...-<pid>", the memory probe's pin root.
var stalePrefixes = []struct{ dir, prefix string }{
	{"/run/netns", "pp-bench-"},
	{loader.BPFFSMount, "podpath-sim-bench-"},
	{loader.BPFFSMount, "podpath-bench-"},
}

// sweepStale removes namespaces and pins left by an earlier run that was
// killed before it could clean up (its pid is gone).
func sweepStale() {
	for _, s := range stalePrefixes {
		entries, err := os.ReadDir(s.dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			name := e.Name()
			if !strings.HasPrefix(name, s.prefix) {
				continue
			}
			i := strings.LastIndexByte(name, '-')
			pid, err := strconv.Atoi(name[i+1:])
			if err != nil || pid == os.Getpid() || processAlive(pid) {
				continue
			}
			path := filepath.Join(s.dir, name)
			if s.dir == "/run/netns" {
				unix.Unmount(path, unix.MNT_DETACH)
				err = os.Remove(path)
			} else {
				err = os.RemoveAll(path)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				slog.Warn("remove stale", "path", path, "err", err)
				continue
			}
			slog.Info("removed stale leftover of an earlier run", "path", path)
		}
	}
}

func processAlive(pid int) bool {
	return unix.Kill(pid, 0) == nil || errors.Is(unix.Kill(pid, 0), unix.EPERM)
}
