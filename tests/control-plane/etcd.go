package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd runs a single-member etcd inside this process, its data in
// DIR/etcd, its client URL written to DIR/etcd-url for `compact`.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "wireway-test"
	cfg.Dir = filepath.Join(dir, "etcd")
	client, peer := freeURL(), freeURL()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Test data is thrown away: skipping fsync makes every write (and so
	// every test) several times faster on a shared disk.
	cfg.UnsafeNoFsync = true
	// etcd logs every request at info; its warnings and errors are enough.
	cfg.LogLevel = "warn"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("etcd: %w", err)
	case <-time.After(time.Minute):
		e.Close()
		return nil, "", errors.New("etcd: not ready after a minute")
	}
	if err := os.WriteFile(filepath.Join(dir, "etcd-url"), []byte(client.String()+"\n"), 0o644); err != nil {
		e.Close()
		return nil, "", err
	}
	return e, client.String(), nil
}

// freeURL picks a free loopback port by binding port 0 and releasing it.
// etcd takes URLs, not listeners, so a port could be taken in between; on
// loopback with the kernel handing out ports in order that is rare enough.
func freeURL() url.URL {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err) // no loopback: nothing here can work
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

// runCompact is the `compact` subcommand: it compacts the etcd of a running
// control plane to its current revision, so that a watch or list from any
// older resourceVersion fails with 410 Gone.
func runCompact(args []string) int {
	fs := flag.NewFlagSet("compact", flag.ExitOnError)
	dir := fs.String("dir", "", "the running control plane's --dir")
	fs.Parse(args)
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "compact: --dir is required")
		return 2
	}
	raw, err := os.ReadFile(filepath.Join(*dir, "etcd-url"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "compact:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{strings.TrimSpace(string(raw))}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "compact:", err)
		return 1
	}
	defer cli.Close()
	// Any read returns the store's current revision in its header.
	resp, err := cli.Get(ctx, "compact_rev_key")
	if err != nil {
		fmt.Fprintln(os.Stderr, "compact:", err)
		return 1
	}
	rev := resp.Header.Revision
	// Physical: return only once the old revisions are really gone, so the
	// caller's next request sees the compaction.
	_, err = cli.Compact(ctx, rev, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		fmt.Fprintln(os.Stderr, "compact:", err)
		return 1
	}
	fmt.Printf("compacted %d\n", rev)
	return 0
}
