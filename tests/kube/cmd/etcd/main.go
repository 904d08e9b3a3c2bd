// Command etcd runs a single-member etcd server embedded from
// go.etcd.io/etcd/server/v3 (the version k8s.io/kubernetes pins), for the
// test suite's control plane only: one loopback client URL, one loopback peer
// URL (etcd wants one even alone), a data directory, no fsync, until killed.
//
// Embedding it keeps the etcd version the one kube-apiserver is built and
// tested with, and builds it from the module graph tests/kube/go.mod already
// has, with no second module or release to pin.
package main

import (
	"flag"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	dataDir := flag.String("data-dir", "", "data directory (required)")
	client := flag.String("listen-client-url", "", "client URL, e.g. http://127.0.0.1:2379 (required)")
	peer := flag.String("listen-peer-url", "", "peer URL, e.g. http://127.0.0.1:2380 (required)")
	flag.Parse()
	if *dataDir == "" || *client == "" || *peer == "" {
		log.Fatal("--data-dir, --listen-client-url and --listen-peer-url are required")
	}
	clientURL, err := url.Parse(*client)
	if err != nil {
		log.Fatalf("--listen-client-url: %v", err)
	}
	peerURL, err := url.Parse(*peer)
	if err != nil {
		log.Fatalf("--listen-peer-url: %v", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = "kms-sidecar-tests"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "warn"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("etcd: %v", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		log.Printf("etcd ready on %s", clientURL)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		log.Fatal("etcd: not ready in 60s")
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-e.Err():
		log.Fatalf("etcd: %v", err)
	case <-stop:
	}
}
