package maps

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Socket-level load balancing: the cgroup programs of bpf/sock.c and the map
// that lets a socket see the frontend it asked for.

// Programs of the socket object, as the entry functions in bpf/sock.c. Each
// attaches to the cgroup hook its section names (cgroup/connect4, ...).
const (
	ProgSockConnect4     = "sock_connect4"
	ProgSockSendmsg4     = "sock_sendmsg4"
	ProgSockRecvmsg4     = "sock_recvmsg4"
	ProgSockGetpeername4 = "sock_getpeername4"
)

// SocketPrograms lists the socket object's programs in the order they are
// attached: the reverse translations before the forward ones, so a socket
// never gets a backend it cannot see as the frontend.
var SocketPrograms = []string{ProgSockRecvmsg4, ProgSockGetpeername4, ProgSockConnect4, ProgSockSendmsg4}

// MapSockRevNat maps (socket cookie, backend) to the frontend the socket
// asked for.
const MapSockRevNat = "sock_rev_nat"

// VarNodeNetnsCookie is the socket programs' read-only copy of the node's
// network namespace cookie: only sockets there are translated (0: all).
const VarNodeNetnsCookie = "node_netns_cookie"

// Go mirrors of the socket map's key and value, from the objects' BTF.
type (
	SockRevKey   = fromPodSockRevKey
	SockRevValue = fromPodSockRevValue
)

// SocketSpec returns the collection spec of the socket object. It is not in
// Specs: that object holds several programs, one per cgroup hook.
func SocketSpec() (*ebpf.CollectionSpec, error) {
	if err := liftMemlock(); err != nil {
		return nil, err
	}
	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("load sock object: %w", err)
	}
	return spec, nil
}
