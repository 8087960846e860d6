package main

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// machine describes where the numbers come from.
type machine struct {
	CPUModel   string            `json:"cpuModel"`
	Cores      int               `json:"cores"`
	Kernel     string            `json:"kernel"`
	GoVersion  string            `json:"goVersion"`
	Timestamp  string            `json:"timestamp"`
	LoadBefore string            `json:"loadAverageBefore"`
	LoadAfter  string            `json:"loadAverageAfter"`
	Tools      map[string]string `json:"tools"`
}

func readMachine() machine {
	m := machine{
		CPUModel:   cpuModel(),
		Cores:      runtime.NumCPU(),
		GoVersion:  runtime.Version(),
		Timestamp:  time.Now().UTC().Format(time.RFC3339),
		LoadBefore: loadAvg(),
		Tools:      map[string]string{},
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		m.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	for tool, args := range map[string][]string{
		"iperf3":   {"iperf3", "--version"},
		"iptables": {"iptables", "--version"},
		"ethtool":  {"ethtool", "--version"},
	} {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			m.Tools[tool] = "missing"
			continue
		}
		m.Tools[tool] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
