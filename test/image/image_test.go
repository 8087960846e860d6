// Package image_test builds podpath's container image with `make image`'s
// builder (deploy/image) and runs it the way a node does: imported into a
// real containerd with `ctr images import`, its binaries run by runc. Needs
// root.
package image_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podpath/podpath/internal/ctrtest"
	"github.com/podpath/podpath/internal/sim"
)

func TestImageRunsUnderContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the image test needs root (containerd and runc)")
	}
	ctrtest.RequireTools(t, "containerd", "runc")
	dir := t.TempDir()
	archive := filepath.Join(dir, "podpath-image.tar")
	build := exec.Command(ctrtest.GoTool(t), "run", "./deploy/image", "-o", archive, "-tag", "imagetest")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("deploy/image: %v\n%s", err, out)
	}

	netns, err := sim.NewNetNS("image")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.RemoveNetNS(netns) })
	cd := ctrtest.Start(t, ctrtest.Options{NetNS: netns.Path(), BinDir: filepath.Join(dir, "cni-bin"), ConfDir: filepath.Join(dir, "cni-conf")})
	cd.ImportImages(t, []string{archive})
	const ref = "docker.io/podpath/podpath:imagetest"
	out, err := cd.Ctr("images", "ls", "-q")
	if err != nil || !strings.Contains(string(out), ref) {
		t.Fatalf("%s not among the images: %v\n%s", ref, err, out)
	}

	run := func(name string, env []string, argv ...string) string {
		t.Helper()
		args := []string{"run", "--rm", "--net-host"}
		for _, e := range env {
			args = append(args, "--env", e)
		}
		args = append(append(args, ref, name), argv...)
		// ctr's attach can miss the whole output of a container that
		// exits at once (seen on a loaded machine: empty, no error):
		// such a run is tried again, up to three times.
		var out []byte
		for try := 0; try < 3 && len(out) == 0; try++ {
			var err error
			out, err = cd.Ctr(args...)
			if err != nil {
				t.Fatalf("ctr run %v: %v\n%s", argv, err, out)
			}
		}
		return string(out)
	}
	// The image's default command is the agent: the binary it names runs.
	if got := run("version", nil, "/usr/local/bin/podpath", "--version"); !strings.Contains(got, "podpath version imagetest") {
		t.Errorf("podpath --version: %q", got)
	}
	// Both CNI plugins it ships answer VERSION as a runtime asks it.
	for _, plugin := range []string{"podpath-cni", "loopback"} {
		got := run(plugin, []string{"CNI_COMMAND=VERSION"}, "/opt/podpath/cni/"+plugin)
		var v struct {
			Supported []string `json:"supportedVersions"`
		}
		if err := json.NewDecoder(bytes.NewReader([]byte(got))).Decode(&v); err != nil || len(v.Supported) == 0 {
			t.Errorf("%s VERSION: %q (%v)", plugin, got, err)
		}
	}
}
