package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// PodRecordDir holds one file per Kubernetes pod the CNI plugin connected
// on this node, named by its address, holding "namespace/name": the agent
// learns a new pod's address from it before kubelet reports it, to write
// the pod's policy before its first packet.
func PodRecordDir(stateDir string) string { return filepath.Join(stateDir, "pods") }

// RecordPod writes the record of the pod namespace/name at addr.
func RecordPod(stateDir string, addr netip.Addr, namespace, name string) error {
	dir := PodRecordDir(stateDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(tmp, "%s/%s\n", namespace, name); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, addr.String()))
}

// ForgetPod removes the record of the pod at addr; none is no error.
func ForgetPod(stateDir string, addr netip.Addr) error {
	err := os.Remove(filepath.Join(PodRecordDir(stateDir), addr.String()))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// PodRecord is a recorded pod's address and when the record was written.
type PodRecord struct {
	Addr    netip.Addr
	Written time.Time
}

// RecordedPods maps "namespace/name" to the record of every recorded pod.
func RecordedPods(stateDir string) (map[string]PodRecord, error) {
	ents, err := os.ReadDir(PodRecordDir(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]PodRecord{}
	for _, e := range ents {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(PodRecordDir(stateDir), e.Name()))
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if key := strings.TrimSpace(string(b)); strings.Count(key, "/") == 1 {
			out[key] = PodRecord{Addr: addr, Written: info.ModTime()}
		}
	}
	return out, nil
}
