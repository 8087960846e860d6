// Command gensum writes the digest of the BPF sources that the committed
// bpf2go output was generated from.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"

	"github.com/podpath/podpath/maps/internal/srcsum"
)

func main() {
	out := flag.String("o", "generated.sum", "output file")
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: gensum -o FILE BPF_DIR (run from the maps directory)")
	}
	sum, err := srcsum.Dir(flag.Arg(0), "gen.go")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, []byte(sum+"\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Println("bpf sources:", sum)
}
