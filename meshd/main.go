// Command meshd is the single meshd binary: the coordinator, the peer agent
// and the admin and diagnostic commands.
package main

import "os"

func main() { os.Exit(run(os.Args[1:])) }
