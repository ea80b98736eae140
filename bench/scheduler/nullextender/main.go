// Command nullextender is the cheapest kube-scheduler extender there can be: it keeps every node and scores
// every node 0. bench/scheduler/scheduler_throughput.py --floor runs kube-scheduler against it to measure
// what the extender protocol itself costs kube-scheduler (two HTTP round trips and JSON encoding per pod,
// in kube-scheduler's own process), apart from anything an extender does. Standard library only.
//
// Wire format: k8s.io/kube-scheduler/extender/v1, whose types carry no json tags, so the keys are the Go
// field names (ExtenderArgs: Pod, Nodes, NodeNames; ExtenderFilterResult: Nodes, NodeNames, FailedNodes,
// FailedAndUnresolvableNodes, Error; HostPriority: Host, Score). With nodeCacheCapable: true only NodeNames
// is sent.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net"
	"net/http"
)

type extenderArgs struct {
	Pod       json.RawMessage
	NodeNames *[]string
}

type filterResult struct {
	NodeNames                  *[]string
	FailedNodes                map[string]string
	FailedAndUnresolvableNodes map[string]string
	Error                      string
}

type hostPriority struct {
	Host  string
	Score int64
}

func decode(w http.ResponseWriter, r *http.Request) (*extenderArgs, bool) {
	var args extenderArgs
	if err := json.NewDecoder(r.Body).Decode(&args); err != nil {
		http.Error(w, "bad ExtenderArgs: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	if args.NodeNames == nil {
		empty := []string{}
		args.NodeNames = &empty
	}
	return &args, true
}

func reply(w http.ResponseWriter, body any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(body); err != nil {
		log.Printf("write: %v", err)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on; the chosen address is printed first")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /filter", func(w http.ResponseWriter, r *http.Request) {
		if args, ok := decode(w, r); ok {
			reply(w, filterResult{NodeNames: args.NodeNames, FailedNodes: map[string]string{},
				FailedAndUnresolvableNodes: map[string]string{}})
		}
	})
	mux.HandleFunc("POST /prioritize", func(w http.ResponseWriter, r *http.Request) {
		if args, ok := decode(w, r); ok {
			scores := make([]hostPriority, len(*args.NodeNames))
			for i, name := range *args.NodeNames {
				scores[i] = hostPriority{Host: name}
			}
			reply(w, scores)
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.SetFlags(0)
	log.Printf("http://%s", listener.Addr())
	log.Fatal(http.Serve(listener, mux))
}
