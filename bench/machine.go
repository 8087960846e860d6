package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
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
	// Governor is the CPU frequency governor of each CPU that shows one
	// ("not visible" where cpufreq is absent, as in most VMs).
	Governor string `json:"cpuFreqGovernor"`
	// RPSDefaultMask is the receive packet steering mask new devices get
	// (net.core.rps_default_mask; 0: none). A veth has no interrupt: what
	// it receives is processed in the softirq of the CPU that sent it,
	// unless RPS steers it elsewhere.
	RPSDefaultMask string `json:"rpsDefaultMask"`
	// Loaded says the machine was busy when the run started: a 1-minute
	// load average at or above half the cores.
	Loaded bool `json:"loadedAtStart"`
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
	m.Governor = governors()
	m.RPSDefaultMask = "not visible"
	if b, err := os.ReadFile("/proc/sys/net/core/rps_default_mask"); err == nil {
		m.RPSDefaultMask = strings.TrimSpace(string(b))
	}
	if f := strings.Fields(m.LoadBefore); len(f) > 0 {
		if l, err := strconv.ParseFloat(f[0], 64); err == nil && l >= float64(m.Cores)/2 {
			m.Loaded = true
		}
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

// governors lists each CPU's cpufreq governor, "cpuN=name", or says there
// is none to see.
func governors() string {
	paths, _ := filepath.Glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")
	var out []string
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			cpu := filepath.Base(filepath.Dir(filepath.Dir(p)))
			out = append(out, cpu+"="+strings.TrimSpace(string(b)))
		}
	}
	if len(out) == 0 {
		return "not visible"
	}
	return strings.Join(out, " ")
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
