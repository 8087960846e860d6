package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/podpath/podpath/loader"
)

// CNIConfName is the conflist the agent writes; containerd reads the first
// conflist of its conf dir in lexical order.
const CNIConfName = "10-podpath.conflist"

// cniVersion of the conflist: containerd 1.6 accepts conflists up to
// 1.0.0, and the plugin speaks every version up to 1.1.0.
const cniVersion = "1.0.0"

// installCNI installs the podpath-cni binary and its conflist, each by an
// atomic rename, once the datapath serves: kubelet reports NetworkReady
// only when a conflist exists, so pods are not started before the node can
// wire them.
func installCNI(cfg Config, node loader.Config) error {
	installed := []string{filepath.Join(cfg.CNIBinDir, "podpath-cni")}
	if err := copyFile(cfg.CNIBinSource, installed[0], 0o755); err != nil {
		return fmt.Errorf("install the CNI plugin: %w", err)
	}
	// Runtimes set up each pod's lo with the reference loopback plugin;
	// a node without it cannot start pods. One shipped beside podpath-cni
	// is installed where none is.
	loopback := filepath.Join(filepath.Dir(cfg.CNIBinSource), "loopback")
	if _, err := os.Stat(filepath.Join(cfg.CNIBinDir, "loopback")); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(loopback); err == nil {
			if err := copyFile(loopback, filepath.Join(cfg.CNIBinDir, "loopback"), 0o755); err != nil {
				return fmt.Errorf("install the loopback plugin: %w", err)
			}
			installed = append(installed, filepath.Join(cfg.CNIBinDir, "loopback"))
		} else {
			slog.Warn("no loopback CNI plugin in the CNI bin dir: runtimes need it to start pods", "dir", cfg.CNIBinDir)
		}
	}
	list := map[string]any{
		"cniVersion": cniVersion,
		"name":       "podpath",
		"plugins": []any{map[string]any{
			"type":         "podpath-cni",
			"pinRoot":      node.PinRoot,
			"stateDir":     node.StateDir,
			"capabilities": map[string]bool{"portMappings": true},
			// ADD attaches with cls_bpf; moveToTCX moves pods to tcx
			// links once ADDs pause (docs/cni.md).
			"deferTCX": true,
		}},
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	conf := filepath.Join(cfg.CNIConfDir, CNIConfName)
	if err := writeFileAtomic(conf, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("install the CNI configuration: %w", err)
	}
	installed = append(installed, conf)
	if err := recordInstalled(node.StateDir, installed); err != nil {
		return err
	}
	slog.Info("CNI plugin installed", "files", installed)
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	b, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, b, mode)
}

// writeFileAtomic writes a temporary file beside path and renames it over
// path, so a reader (kubelet, containerd) never sees half a file, and a
// running binary being replaced keeps running.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// installedFile lists, in the node's state directory, the files the agent
// put on the node, so `podpath node reset` can take them away again.
const installedFile = "agent-installed.json"

func recordInstalled(stateDir string, files []string) error {
	b, err := json.Marshal(files)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(stateDir, installedFile), b, 0o600)
}

// Uninstall removes what agents installed on the node with this state
// directory (the CNI plugin, the loopback plugin where it was the agent's,
// the conflist): with `podpath node reset`, the node is as it was before.
func Uninstall(stateDir string) error {
	record := filepath.Join(stateDir, installedFile)
	b, err := os.ReadFile(record)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var files []string
	if err := json.Unmarshal(b, &files); err != nil {
		return fmt.Errorf("%s: %w", record, err)
	}
	var errs []error
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(record))
	}
	return errors.Join(errs...)
}
