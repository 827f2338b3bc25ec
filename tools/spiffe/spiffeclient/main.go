// spiffeclient is an unmodified go-spiffe client for the federation tests: it prints, as JSON,
// what go-spiffe itself makes of meshward's Workload API and bundle endpoint.
//
//	-socket unix:///path        FetchX509Context and FetchX509Bundles from the Workload API: the
//	                            SVID's ID and, per trust domain, the SHA-256 of each root
//	-fetch URL -trust-domain TD -endpoint-id ID -bundle FILE
//	                            go-spiffe's federation.FetchBundle (https_spiffe) from a bundle
//	                            endpoint, authenticated with the SPIFFE bundle in FILE: the roots,
//	                            sequence number and refresh hint it got
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func roots(set []*x509bundle.Bundle) map[string][]string {
	out := map[string][]string{}
	for _, b := range set {
		var fps []string
		for _, c := range b.X509Authorities() {
			sum := sha256.Sum256(c.Raw)
			fps = append(fps, hex.EncodeToString(sum[:]))
		}
		sort.Strings(fps)
		out[b.TrustDomain().Name()] = fps
	}
	return out
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "spiffeclient: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	socket := flag.String("socket", "", "Workload API address (unix:///path)")
	fetch := flag.String("fetch", "", "bundle endpoint URL")
	td := flag.String("trust-domain", "", "trust domain of the fetched bundle")
	endpointID := flag.String("endpoint-id", "", "the bundle endpoint's SPIFFE ID")
	bundlePath := flag.String("bundle", "", "SPIFFE bundle authenticating the endpoint")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	result := map[string]any{}
	switch {
	case *socket != "":
		addr := workloadapi.WithAddr(*socket)
		x509ctx, err := workloadapi.FetchX509Context(ctx, addr)
		if err != nil {
			fail("FetchX509Context: %v", err)
		}
		result["svid"] = x509ctx.DefaultSVID().ID.String()
		result["x509_context_bundles"] = roots(x509ctx.Bundles.Bundles())
		bundles, err := workloadapi.FetchX509Bundles(ctx, addr)
		if err != nil {
			fail("FetchX509Bundles: %v", err)
		}
		result["x509_bundles"] = roots(bundles.Bundles())
	case *fetch != "":
		trustDomain, err := spiffeid.TrustDomainFromString(*td)
		if err != nil {
			fail("-trust-domain: %v", err)
		}
		id, err := spiffeid.FromString(*endpointID)
		if err != nil {
			fail("-endpoint-id: %v", err)
		}
		auth, err := spiffebundle.Load(id.TrustDomain(), *bundlePath)
		if err != nil {
			fail("-bundle: %v", err)
		}
		got, err := federation.FetchBundle(ctx, trustDomain, *fetch, federation.WithSPIFFEAuth(auth, id))
		if err != nil {
			fail("FetchBundle: %v", err)
		}
		seq, _ := got.SequenceNumber()
		hint, _ := got.RefreshHint()
		result["roots"] = roots([]*x509bundle.Bundle{got.X509Bundle()})[trustDomain.Name()]
		result["sequence"] = seq
		result["refresh_hint_seconds"] = hint.Seconds()
	default:
		fail("give -socket or -fetch")
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fail("%v", err)
	}
}
