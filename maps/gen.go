package maps

// The BPF objects and the Go mirrors of their map keys and values are
// generated from bpf/ by bpf2go and committed, so `go build` needs no clang.
// `make generate` rebuilds them and records the sources' digest in
// generated.sum; TestGeneratedUpToDate fails when that digest is stale.

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel fromPod ../bpf/from_pod.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types xdpNetdev ../bpf/xdp_netdev.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types fromNetdev ../bpf/from_netdev.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types sock ../bpf/sock.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types toNetdev ../bpf/to_netdev.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types toPod ../bpf/to_pod.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types fromOverlay ../bpf/from_overlay.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -no-global-types toOverlay ../bpf/to_overlay.c

// The same programs built for the dry run of `podpath trace`
// (bpf/lib/trace.h): no write to a shared map, a log of their own.
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types fromPodDry ../bpf/from_pod.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types xdpNetdevDry ../bpf/xdp_netdev.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types fromNetdevDry ../bpf/from_netdev.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types toNetdevDry ../bpf/to_netdev.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types toPodDry ../bpf/to_pod.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types fromOverlayDry ../bpf/from_overlay.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_DRY_RUN" -target bpfel -no-global-types toOverlayDry ../bpf/to_overlay.c

// from_pod without the trace events' hooks, for the benchmark only: the
// reference the cost of tracing switched off is measured against.
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu -DPODPATH_NO_TRACE" -target bpfel -no-global-types fromPodNoTrace ../bpf/from_pod.c
//go:generate go run ./internal/gensum -o generated.sum ../bpf
