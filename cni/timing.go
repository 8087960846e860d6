package cni

import (
	"encoding/json"
	"log/slog"
	"os"
	"time"
)

// TimingsEnv names a file to which the plugin appends, for every ADD and
// DEL, one JSON line with the time each step took (Timing): where a pod's
// setup time goes, for benchmarks and for a slow node.
const TimingsEnv = "PODPATH_CNI_TIMINGS"

// Timing is one command's steps, in the order taken, in microseconds.
type Timing struct {
	Command   string  `json:"command"`
	Container string  `json:"container"`
	Steps     []Step  `json:"steps"`
	TotalUS   float64 `json:"totalUs"`
	Failed    bool    `json:"failed,omitempty"`
}

// Step is one named step of a command and how long it took.
type Step struct {
	Name string  `json:"name"`
	US   float64 `json:"us"`
}

// stepTimer records the steps of one command.
type stepTimer struct {
	t     Timing
	start time.Time
	last  time.Time
}

func newStepTimer(command, container string) *stepTimer {
	now := time.Now()
	return &stepTimer{t: Timing{Command: command, Container: container}, start: now, last: now}
}

// step ends the step named name: the time since the previous one ended.
func (s *stepTimer) step(name string) {
	now := time.Now()
	s.t.Steps = append(s.t.Steps, Step{Name: name, US: us(now.Sub(s.last))})
	s.last = now
}

// done writes the command's line when TimingsEnv names a file, and logs the
// steps at debug level.
func (s *stepTimer) done(err error) {
	s.t.TotalUS = us(time.Since(s.start))
	s.t.Failed = err != nil
	slog.Debug("steps", "command", s.t.Command, "container", s.t.Container, "steps", s.t.Steps, "totalUs", s.t.TotalUS)
	path := os.Getenv(TimingsEnv)
	if path == "" {
		return
	}
	b, jerr := json.Marshal(s.t)
	if jerr != nil {
		return
	}
	f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if ferr != nil {
		slog.Warn("timings", "file", path, "err", ferr)
		return
	}
	// One write of a whole line: concurrent plugins append whole lines.
	f.Write(append(b, '\n'))
	f.Close()
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
