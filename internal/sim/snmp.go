package sim

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// SNMP reads the IP, ICMP, TCP and UDP counters of /proc/net/snmp in the
// namespace do runs in (Pod.Do, Outside.Do, Node.Do), keyed "Ip.ReasmOKs",
// "Ip.FragCreates", "Icmp.OutDestUnreachs" and so on. The file is read
// through /proc/thread-self: /proc/self/net is the main thread's namespace,
// not the one the locked thread inside do has entered.
func SNMP(do func(func() error) error) (map[string]int64, error) {
	var b []byte
	if err := do(func() (err error) {
		b, err = os.ReadFile("/proc/thread-self/net/snmp")
		return err
	}); err != nil {
		return nil, err
	}
	// Each group is two lines: "Ip: Forwarding DefaultTTL ...", then
	// "Ip: 1 64 ..." with the values in the same order.
	out := map[string]int64{}
	names := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		group, rest, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if names[group] == nil {
			names[group] = fields
			continue
		}
		for i, v := range fields {
			if i >= len(names[group]) {
				break
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("/proc/net/snmp %s.%s: %w", group, names[group][i], err)
			}
			out[group+"."+names[group][i]] = n
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no counters in /proc/net/snmp")
	}
	return out, nil
}
