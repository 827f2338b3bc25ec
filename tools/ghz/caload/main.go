// caload keeps N certificate-signing calls in flight over one or more connections and prints
// what it saw as JSON. It is the CA benchmark's lean client: ghz builds every request from JSON
// through dynamic messages (~0.5 ms of CPU per call here), which on a 2-core box takes CPU from
// the server it measures. Requests are encoded by hand, so no generated code is needed:
//
//	-api istio  IstioCertificateService/CreateCertificate over TLS/mTLS (field 1: the PEM CSR)
//	-api spire  SPIRE's SVID/MintX509SVID (field 1: the DER CSR, field 2: TTL seconds), the
//	            reference row: its admin API over the server's local socket (-addr unix:///path)
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

const (
	istioMethod = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
	spireMethod = "/spire.api.server.svid.v1.SVID/MintX509SVID"
)

// rawCodec sends and receives already-encoded protobuf bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append((*(v.(*[]byte)))[:0], data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

func varint(out []byte, n uint64) []byte {
	for n >= 0x80 {
		out = append(out, byte(n)|0x80)
		n >>= 7
	}
	return append(out, byte(n))
}

// istioRequest encodes IstioCertificateRequest{csr: pem}: tag 1, wire type 2, length, bytes.
func istioRequest(csrPEM string) []byte {
	return append(varint([]byte{0x0a}, uint64(len(csrPEM))), csrPEM...)
}

// spireRequest encodes MintX509SVIDRequest{csr: der, ttl: seconds} (SPIRE wants the CSR in DER,
// with the SPIFFE ID as its one URI SAN).
func spireRequest(csrPEM string, ttl int) []byte {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil {
		fail("a CSR in -data is not PEM")
	}
	out := append(varint([]byte{0x0a}, uint64(len(block.Bytes))), block.Bytes...)
	return varint(append(out, 0x10), uint64(ttl))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "caload: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	addr := flag.String("addr", "", "host:port of the CA, or unix:///path for SPIRE's local socket")
	api := flag.String("api", "istio", "istio (CreateCertificate) or spire (MintX509SVID)")
	ttl := flag.Int("ttl", 3600, "SVID TTL in seconds asked of SPIRE")
	nconns := flag.Int("conns", 1, "connections; call k goes over connection k mod conns")
	caFile := flag.String("cacert", "", "trust bundle (PEM); none: plaintext (grpcio's floor)")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	cname := flag.String("cname", "", "server name to verify")
	data := flag.String("data", "", `JSON array of {"csr": PEM}; request i sends element i mod len`)
	conc := flag.Int("c", 16, "calls in flight")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "calls before counting")
	duration := flag.Duration("z", 3*time.Second, "counting window")
	flag.Parse()

	var items []struct {
		CSR string `json:"csr"`
	}
	raw, err := os.ReadFile(*data)
	if err != nil {
		fail("%v", err)
	}
	if err := json.Unmarshal(raw, &items); err != nil || len(items) == 0 {
		fail("%s: want a non-empty JSON array of {\"csr\": ...}: %v", *data, err)
	}
	method := istioMethod
	if *api == "spire" {
		method = spireMethod
	} else if *api != "istio" {
		fail("-api must be istio or spire, not %q", *api)
	}
	reqs := make([][]byte, len(items))
	for i, it := range items {
		if *api == "spire" {
			reqs[i] = spireRequest(it.CSR, *ttl)
		} else {
			reqs[i] = istioRequest(it.CSR)
		}
	}
	creds := insecure.NewCredentials()
	if *caFile != "" {
		pool := x509.NewCertPool()
		bundle, err := os.ReadFile(*caFile)
		if err != nil || !pool.AppendCertsFromPEM(bundle) {
			fail("cannot load trust bundle %s: %v", *caFile, err)
		}
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fail("cannot load client certificate: %v", err)
		}
		creds = credentials.NewTLS(&tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: *cname,
		})
	}
	if *nconns < 1 {
		fail("-conns must be at least 1")
	}
	conns := make([]*grpc.ClientConn, *nconns)
	for k := range conns {
		// Each Dial is its own connection (grpc-go shares nothing between ClientConns).
		conn, err := grpc.Dial(*addr, grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fail("dial %s: %v", *addr, err)
		}
		defer conn.Close()
		conns[k] = conn
	}

	var next, ok atomic.Int64
	var counting, stop atomic.Bool
	var mu sync.Mutex
	errs := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		conn := conns[w%len(conns)]
		go func() {
			defer wg.Done()
			var resp []byte
			for !stop.Load() {
				i := next.Add(1)
				err := conn.Invoke(context.Background(), method, &reqs[i%int64(len(reqs))], &resp)
				if !counting.Load() {
					continue
				}
				if err != nil {
					mu.Lock()
					errs[status.Code(err).String()+": "+status.Convert(err).Message()]++
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(*warmup)
	// The first line marks the window's start (the caller samples the server's CPU time then);
	// the JSON result line follows at its end.
	fmt.Println("counting")
	counting.Store(true)
	start := time.Now()
	time.Sleep(*duration)
	counting.Store(false)
	seconds := time.Since(start).Seconds()
	okCount := ok.Load()
	fmt.Println(`{"window_end": true}`)
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	out, _ := json.Marshal(map[string]any{"ok": okCount, "seconds": seconds, "errors": errs})
	mu.Unlock()
	fmt.Println(string(out))
}
