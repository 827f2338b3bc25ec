// caload keeps N IstioCertificateService/CreateCertificate calls in flight over one mTLS
// connection and prints what it saw as JSON. It is the CA benchmark's lean client: ghz builds
// every request from JSON through dynamic messages (~0.5 ms of CPU per call here), which on a
// 2-core box takes CPU from the server it measures. The request is encoded by hand (field 1,
// the PEM CSR, is all it carries), so no generated code is needed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
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

const method = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

// rawCodec sends and receives already-encoded protobuf bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append((*(v.(*[]byte)))[:0], data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// request encodes IstioCertificateRequest{csr: pem}: tag 1, wire type 2, varint length.
func request(pem string) []byte {
	out := []byte{0x0a}
	n := len(pem)
	for n >= 0x80 {
		out = append(out, byte(n)|0x80)
		n >>= 7
	}
	out = append(out, byte(n))
	return append(out, pem...)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "caload: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	addr := flag.String("addr", "", "host:port of the CA")
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
	reqs := make([][]byte, len(items))
	for i, it := range items {
		reqs[i] = request(it.CSR)
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
	conn, err := grpc.Dial(*addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		fail("dial %s: %v", *addr, err)
	}
	defer conn.Close()

	var next, ok atomic.Int64
	var counting, stop atomic.Bool
	var mu sync.Mutex
	errs := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
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
