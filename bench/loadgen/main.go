// Command loadgen is the benchmark's native load generator (bench/README.md, "The load
// generator"). bench/run.py builds it on demand and drives the CA (gRPC over TLS) and the peer
// CFSSL (its HTTP/1.1 JSON API) with it; tests/e2e/test_stream_limit.py uses it to put many
// calls on one connection.
//
// It sends request bodies that Python encoded before timing, read from -bodies: a sequence of
// records, each a 4-byte big-endian length followed by that many bytes. For gRPC a record is a
// serialized dapr.proto.sentry.v1.SignCertificateRequest, for HTTP the JSON body of
// POST /api/v1/cfssl/sign. Every call takes the next unused record, so no CSR is sent twice in a
// run; only when the file runs out does it wrap around, and the result says so.
//
// Connections: -concurrency goroutines, each holding its own connection (a grpc.ClientConn, or
// an http.Transport limited to one kept-alive HTTP/1.1 connection), as sidecars each hold their
// own. With -streams-per-conn K (gRPC only) K goroutines share one connection instead, so up to
// K calls are in flight on it at once: grpc-go keeps the calls past the server's advertised
// MAX_CONCURRENT_STREAMS waiting on the client until a stream is free (what the CA's server
// then does with them: tests/e2e/test_stream_limit.py).
//
// Load, exactly as the Python generator in bench/run.py:
//   - closed loop (-rate 0): each goroutine calls again as soon as it has an answer, so
//     -concurrency calls are in flight;
//   - open loop (-rate R): call k is due at start + k/R and its latency counts from then, so a
//     call that starts late because every goroutine is busy is charged to the server (no
//     coordinated omission);
//   - -warmup seconds of load, then -duration seconds measured: "completed" counts the calls
//     that succeeded within the window, the latencies are those of the calls begun in it;
//   - -calls N instead: exactly N calls, the goroutines released together, every call counted.
//
// Before the load, each connection is opened and makes one call (the TLS handshake and the
// server's first-call paths are not measured). With -sync the program then prints
// {"ready":true} and waits for a line "start T" on stdin, T being the CLOCK_MONOTONIC time in
// seconds (Python's time.monotonic()) at which to begin, so that the caller can sample the
// server's CPU over exactly the same window.
//
// It prints one JSON object (type result below) on stdout; the client CPU it reports is its
// own (getrusage, every thread) over the measured window.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// method is the CA's one RPC (proto/sentryca_proto/sentry/v1/sentry.proto).
const method = "/dapr.proto.sentry.v1.CA/SignCertificate"

// rawCodec sends and receives messages as the bytes they already are: the requests were
// serialized by Python, and a response is only checked (see grpcOK), so no generated protobuf
// code is needed.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = data // grpc-go 1.33 hands each message its own buffer: keeping it is safe
	return nil
}

// Name is used in the content-type only when set through CallContentSubtype; with ForceCodec
// the call goes out as plain application/grpc, as any protobuf client's does.
func (rawCodec) Name() string { return "proto" }

// pemPrefix is how the leaf's PEM chain (SignCertificateResponse field 1) must begin.
var pemPrefix = []byte("-----BEGIN CERTIFICATE-----")

// grpcOK tells whether a SignCertificateResponse is a real answer: its first field is
// workload_certificate (field 1, length-delimited: tag byte 0x0a) and holds a PEM certificate.
// The CA writes the fields in order, as every protobuf encoder does.
func grpcOK(resp []byte) bool {
	if len(resp) < 2 || resp[0] != 0x0a {
		return false
	}
	n, used := binary.Uvarint(resp[1:])
	if used <= 0 || n > uint64(len(resp)-1-used) {
		return false
	}
	return bytes.HasPrefix(resp[1+used:1+used+int(n)], pemPrefix)
}

// caller makes one call with one request body; it returns "" on success, else a failure code
// (a gRPC status code name, "BadResponse", "HTTP 500", "transport", ...) and the error.
type caller func(ctx context.Context, body []byte) (string, error)

// dials counts the TCP connections opened, to show one per connection (no reconnects).
var dials int64

func countingDialer(timeout time.Duration) func(context.Context, string, string) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		atomic.AddInt64(&dials, 1)
		return d.DialContext(ctx, network, addr)
	}
}

// grpcCaller opens one TLS connection to target (trusting only the anchors in caFile, expecting
// serverName in the server's certificate) and returns a caller on it and its closer.
func grpcCaller(target, caFile, serverName string) (caller, func(), error) {
	creds, err := credentials.NewClientTLSFromFile(caFile, serverName)
	if err != nil {
		return nil, nil, err
	}
	dial := countingDialer(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}),
		grpc.WithBlock(),                 // connected (TLS done) before any call is timed
		grpc.WithReturnConnectionError(), // a failed TLS handshake says why
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", target, err)
	}
	call := func(ctx context.Context, body []byte) (string, error) {
		var resp []byte
		if err := conn.Invoke(ctx, method, &body, &resp); err != nil {
			return status.Code(err).String(), err
		}
		if !grpcOK(resp) {
			return "BadResponse", fmt.Errorf("status OK but no PEM certificate in the %d-byte answer", len(resp))
		}
		return "", nil
	}
	return call, func() { conn.Close() }, nil
}

// httpSuccess is what CFSSL's API says in a successful answer.
var httpSuccess = []byte(`"success":true`)

// httpCaller returns a caller over its own http.Transport, which keeps at most one HTTP/1.1
// connection to url alive; success is HTTP 200 with "success":true in the JSON answer.
func httpCaller(url string) (caller, func()) {
	transport := &http.Transport{
		DialContext:         countingDialer(10 * time.Second),
		MaxConnsPerHost:     1,
		MaxIdleConns:        1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false, // plaintext HTTP/1.1, as CFSSL's API is served
	}
	client := &http.Client{Transport: transport}
	call := func(ctx context.Context, body []byte) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return "request", err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return "transport", err
		}
		data, err := io.ReadAll(resp.Body) // read to the end, so the connection is kept alive
		resp.Body.Close()
		if err != nil {
			return "transport", err
		}
		if resp.StatusCode != http.StatusOK || !bytes.Contains(data, httpSuccess) {
			if len(data) > 200 {
				data = data[:200]
			}
			return "HTTP " + strconv.Itoa(resp.StatusCode), fmt.Errorf("answered %d: %q", resp.StatusCode, data)
		}
		return "", nil
	}
	return call, transport.CloseIdleConnections
}

// pool hands out the request bodies, each once; past the end it wraps around (and says so).
type pool struct {
	items [][]byte
	next  int64 // index of the next body to hand out; atomic
}

func (p *pool) take() []byte {
	i := atomic.AddInt64(&p.next, 1) - 1
	return p.items[i%int64(len(p.items))]
}

func (p *pool) taken() int64 { return atomic.LoadInt64(&p.next) }

// readBodies parses a -bodies file: records of a 4-byte big-endian length and that many bytes.
func readBodies(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 4 {
			return nil, fmt.Errorf("%s: truncated length after %d bodies", path, len(out))
		}
		n := binary.BigEndian.Uint32(data)
		if uint64(n) > uint64(len(data)-4) {
			return nil, fmt.Errorf("%s: body %d claims %d bytes, %d left", path, len(out), n, len(data)-4)
		}
		out = append(out, data[4:4+n:4+n])
		data = data[4+n:]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no request body", path)
	}
	return out, nil
}

// monotonicAt is the time.Time of CLOCK_MONOTONIC reading t (seconds), the clock of Python's
// time.monotonic(); Go's own monotonic readings are not exposed, so the offset is taken now.
func monotonicAt(t float64) (time.Time, error) {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}, err
	}
	mono := float64(ts.Sec) + float64(ts.Nsec)/1e9
	return now.Add(time.Duration((t - mono) * 1e9)), nil
}

// cpuSeconds is this process's user + system CPU time, all threads (getrusage).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// client is one load goroutine's state; each keeps its own tallies, merged at the end, so the
// calls share nothing but the body pool and (with -streams-per-conn) a connection.
type client struct {
	call      caller
	completed int64     // successful calls that finished within the window
	latencies []float64 // ms, of those among them that began within it
	failures  map[string]int64
	firstErr  error
	maxLag    time.Duration // open loop: the latest a call began after it was due (in the window)
}

func (c *client) fail(code string, err error) {
	c.failures[code]++
	if c.firstErr == nil {
		c.firstErr = err
	}
}

// load describes one run.
type load struct {
	start, measure, end time.Time // warm-up from start, measured window [measure, end]
	rate                float64   // calls/s; 0: closed loop
	calls               int64     // > 0: exactly this many calls, all counted, then stop
	timeout             time.Duration
}

// run is one goroutine's loop; schedule numbers the calls (open loop, -calls).
func (l *load) run(c *client, bodies *pool, schedule *int64, release <-chan struct{}) {
	<-release
	sleepUntil(l.start)
	for {
		var began time.Time
		switch {
		case l.calls > 0:
			if atomic.AddInt64(schedule, 1) > l.calls {
				return
			}
			began = time.Now()
		case l.rate > 0:
			k := atomic.AddInt64(schedule, 1) - 1
			began = l.start.Add(time.Duration(float64(k) * 1e9 / l.rate))
			if !began.Before(l.end) {
				return
			}
			sleepUntil(began)
			if lag := time.Since(began); !began.Before(l.measure) && lag > c.maxLag {
				c.maxLag = lag
			}
		default:
			began = time.Now()
			if !began.Before(l.end) {
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		code, err := c.call(ctx, bodies.take())
		cancel()
		done := time.Now()
		if code != "" {
			c.fail(code, err)
			continue
		}
		if l.calls > 0 || (!done.Before(l.measure) && !done.After(l.end)) {
			c.completed++
			if !began.Before(l.measure) {
				c.latencies = append(c.latencies, float64(done.Sub(began))/1e6)
			}
		}
	}
}

// result is the JSON object printed at the end. Latencies are null when no call was measured.
type result struct {
	Mode           string           `json:"mode"`
	Concurrency    int              `json:"concurrency"`      // load goroutines (calls in flight, closed loop)
	Connections    int              `json:"connections"`      // connections opened before the load
	StreamsPerConn int              `json:"streams_per_conn"` // goroutines sharing one connection
	Dials          int64            `json:"dials"`            // TCP connections opened in all (== connections: no reconnect)
	OfferedPerS    *float64         `json:"offered_per_s"`    // open loop; null: closed loop
	Calls          int64            `json:"calls,omitempty"`  // -calls
	WarmupS        float64          `json:"warmup_s"`
	Seconds        float64          `json:"seconds"`   // the measured window (-calls: the whole run)
	Completed      int64            `json:"completed"` // successful calls finished in the window
	Measured       int              `json:"measured"`  // of them, begun in the window: the latencies
	SignsPerS      float64          `json:"signs_per_s"`
	P50Ms          *float64         `json:"p50_ms"`
	P99Ms          *float64         `json:"p99_ms"`
	MaxMs          *float64         `json:"max_ms"`
	MaxStartLagMs  *float64         `json:"max_start_lag_ms,omitempty"`
	Errors         int64            `json:"errors"`   // failed calls, warm-up included
	Failures       map[string]int64 `json:"failures"` // by gRPC status code name / HTTP status
	FirstError     string           `json:"first_error,omitempty"`
	ClientCPUS     float64          `json:"client_cpu_s"`       // this process, over the window
	ClientCPUTotS  float64          `json:"client_cpu_total_s"` // this process, since it started
	Bodies         int              `json:"bodies"`             // in the -bodies file
	BodiesUsed     int64            `json:"bodies_used"`        // warm-up calls included
	BodiesWrapped  bool             `json:"bodies_wrapped"`     // ran past the end: some CSRs sent twice
	GoVersion      string           `json:"go_version"`
	GrpcVersion    string           `json:"grpc_go_version"`
	GOMAXPROCS     int              `json:"gomaxprocs"`
}

func num(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

// percentile is the nearest-rank percentile q (0-100) of ascending values, as bench/run.py's.
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(q / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func fatal(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(code)
}

func main() {
	mode := flag.String("mode", "grpc", "grpc (the CA: gRPC over TLS) or http (CFSSL's JSON API)")
	target := flag.String("target", "", "grpc: HOST:PORT of the CA")
	caFile := flag.String("ca", "", "grpc: PEM file of the trust anchors the server's certificate must chain to")
	serverName := flag.String("server-name", "localhost", "grpc: the name the server's certificate must carry")
	url := flag.String("url", "", "http: the URL to POST each body to")
	bodiesFile := flag.String("bodies", "", "file of request bodies (4-byte big-endian length + bytes each)")
	concurrency := flag.Int("concurrency", 1, "load goroutines: calls in flight (closed loop), senders (open loop)")
	streams := flag.Int("streams-per-conn", 1, "grpc: goroutines sharing one connection (1: a connection each)")
	rate := flag.Float64("rate", 0, "open loop: calls offered per second (0: closed loop)")
	warmup := flag.Float64("warmup", 1, "seconds of load before the measured window")
	duration := flag.Float64("duration", 8, "seconds measured")
	calls := flag.Int64("calls", 0, "instead of a timed run: exactly this many calls, all counted")
	timeout := flag.Float64("timeout", 30, "seconds a call may take (its gRPC deadline)")
	syncStart := flag.Bool("sync", false, `print {"ready":true} once connected, then read "start T" (CLOCK_MONOTONIC s) from stdin`)
	flag.Parse()

	if *concurrency < 1 || *streams < 1 || *rate < 0 || *warmup < 0 || *duration <= 0 || *calls < 0 || *timeout <= 0 {
		fatal(2, "-concurrency and -streams-per-conn must be ≥ 1, -rate, -warmup and -calls ≥ 0, -duration and -timeout > 0")
	}
	if *calls > 0 && *rate > 0 {
		fatal(2, "-calls and -rate exclude each other")
	}
	if *mode != "grpc" && *mode != "http" {
		fatal(2, "-mode must be grpc or http, not %q", *mode)
	}
	if *bodiesFile == "" {
		fatal(2, "-bodies is required")
	}
	items, err := readBodies(*bodiesFile)
	if err != nil {
		fatal(1, "%v", err)
	}
	bodies := &pool{items: items}

	// One connection per group of -streams-per-conn goroutines, each warmed by one call.
	var callers []caller
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	switch *mode {
	case "grpc":
		if *target == "" || *caFile == "" {
			fatal(2, "grpc mode needs -target and -ca")
		}
		for i := 0; i < (*concurrency+*streams-1) / *streams; i++ {
			call, closer, err := grpcCaller(*target, *caFile, *serverName)
			if err != nil {
				fatal(1, "connection %d: %v", i, err)
			}
			callers, closers = append(callers, call), append(closers, closer)
		}
	case "http":
		if *url == "" {
			fatal(2, "http mode needs -url")
		}
		if *streams != 1 {
			fatal(2, "-streams-per-conn applies to grpc only (HTTP/1.1 has one call per connection at a time)")
		}
		for i := 0; i < *concurrency; i++ {
			call, closer := httpCaller(*url)
			callers, closers = append(callers, call), append(closers, closer)
		}
	}
	for i, call := range callers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(*timeout*1e9))
		code, err := call(ctx, bodies.take())
		cancel()
		if code != "" {
			fatal(1, "warm-up call on connection %d failed (%s): %v", i, code, err)
		}
	}

	l := &load{rate: *rate, calls: *calls, timeout: time.Duration(*timeout * 1e9)}
	l.start = time.Now().Add(20 * time.Millisecond) // time for every goroutine to be waiting
	if *syncStart {
		fmt.Println(`{"ready":true}`)
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		fields := strings.Fields(line)
		if err != nil || len(fields) != 2 || fields[0] != "start" {
			fatal(1, `expected "start T" on stdin, got %q (%v)`, line, err)
		}
		t, err := strconv.ParseFloat(fields[1], 64)
		if err != nil {
			fatal(1, "start time %q: %v", fields[1], err)
		}
		if l.start, err = monotonicAt(t); err != nil {
			fatal(1, "CLOCK_MONOTONIC: %v", err)
		}
	}
	l.measure = l.start.Add(time.Duration(*warmup * 1e9))
	l.end = l.measure.Add(time.Duration(*duration * 1e9))
	if *calls > 0 {
		l.measure, l.end = l.start, l.start // the window is the whole run
	}

	clients := make([]*client, *concurrency)
	for i := range clients {
		clients[i] = &client{call: callers[i / *streams], failures: map[string]int64{}}
	}
	var schedule int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func(c *client) {
			defer wg.Done()
			l.run(c, bodies, &schedule, release)
		}(c)
	}
	// CPU at the window's two edges, sampled while the load runs (-calls: around the whole run).
	var cpu0, cpu1 float64
	sampled := make(chan struct{})
	if *calls == 0 {
		go func() {
			sleepUntil(l.measure)
			cpu0 = cpuSeconds()
			sleepUntil(l.end)
			cpu1 = cpuSeconds()
			close(sampled)
		}()
	} else {
		cpu0 = cpuSeconds()
	}
	close(release)
	wg.Wait()
	seconds := *duration
	if *calls > 0 {
		cpu1 = cpuSeconds()
		seconds = time.Since(l.start).Seconds()
	} else {
		<-sampled
	}

	res := result{
		Mode:           *mode,
		Concurrency:    *concurrency,
		Connections:    len(callers),
		StreamsPerConn: *streams,
		Dials:          atomic.LoadInt64(&dials),
		Calls:          *calls,
		WarmupS:        *warmup,
		Seconds:        seconds,
		Failures:       map[string]int64{},
		ClientCPUS:     cpu1 - cpu0,
		Bodies:         len(items),
		BodiesUsed:     bodies.taken(),
		BodiesWrapped:  bodies.taken() > int64(len(items)),
		GoVersion:      runtime.Version(),
		GrpcVersion:    grpc.Version,
		GOMAXPROCS:     runtime.GOMAXPROCS(0),
	}
	if *calls > 0 {
		res.WarmupS = 0
	}
	if *rate > 0 {
		res.OfferedPerS = rate
	}
	var latencies []float64
	var maxLag time.Duration
	var firstErr error
	for _, c := range clients {
		res.Completed += c.completed
		latencies = append(latencies, c.latencies...)
		for code, n := range c.failures {
			res.Failures[code] += n
			res.Errors += n
		}
		if firstErr == nil {
			firstErr = c.firstErr
		}
		if c.maxLag > maxLag {
			maxLag = c.maxLag
		}
	}
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	sort.Float64s(latencies)
	res.Measured = len(latencies)
	res.SignsPerS = float64(res.Completed) / seconds
	res.P50Ms = num(percentile(latencies, 50))
	res.P99Ms = num(percentile(latencies, 99))
	if len(latencies) > 0 {
		res.MaxMs = num(latencies[len(latencies)-1])
	}
	if *rate > 0 {
		res.MaxStartLagMs = num(float64(maxLag) / 1e6)
	}
	res.ClientCPUTotS = cpuSeconds()
	out, err := json.Marshal(res)
	if err != nil {
		fatal(1, "%v", err)
	}
	fmt.Println(string(out))
}
