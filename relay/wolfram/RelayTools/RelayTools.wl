(* ::Package:: *)

(* RelayTools`: relay for the Mathematica front end and controller kernel.

   RelaySetupKernelConfiguration writes a kernel configuration whose Launch command is
   `relay launch`; RelayMachine is a RemoteMachine for pools of parallel compute kernels whose
   $RemoteCommand template is `relay launch --compute`; RelayStatus reads `relay status`;
   RelayRemoveKernelConfiguration takes out what RelaySetupKernelConfiguration added.
   The pure string builders here have Python twins in relay/frontendconfig.py, and a test
   evaluates both (under Mathics3) and compares them.

   Runs on the front end's machine, macOS or Linux (relay's shim needs Unix sockets and
   signals), with Mathematica 10.0 or later: a test checks every System symbol here against
   its first version. *)

BeginPackage["RelayTools`"]

RelaySetupKernelConfiguration::usage = "RelaySetupKernelConfiguration[name, host] adds (or replaces) the front end kernel configuration name, which runs its kernel on host through relay. Options: \"KernelPath\" (default \"\": the host's configured kernel in relay.toml), \"RelayCommand\"."
RelayRemoveKernelConfiguration::usage = "RelayRemoveKernelConfiguration[name] removes the kernel configuration name if it runs through relay; RelayRemoveKernelConfiguration[All] removes every one that does. Gives the names removed."
RelayDropKernelConfigurations::usage = "RelayDropKernelConfigurations[evaluatorNames, name | All] gives {kept, removedNames}: the EvaluatorNames without relay's configuration name (or all of relay's)."
RelayKernelConfigurationQ::usage = "RelayKernelConfigurationQ[config] is True for a kernel configuration whose Launch command runs relay launch."
RelayMachine::usage = "RelayMachine[host, n, opts] is a RemoteMachine of n compute kernels on host, launched through relay: LaunchKernels[RelayMachine[\"myhost\", 8]]. \"KernelPath\" defaults to \"\", the host's configured kernel. RemoteMachine options (KernelSpeed, LinkHost, ...) pass through. Evaluating it runs relay connect host --kernels n in the background, so the first kernel starts on a warm connection (and on a Slurm host one job is asked for all n kernels). Each Run returns once its kernel is started; Parallel`Settings`$MathLinkTimeout (15 s) must cover a kernel's start-up, and relay's launch_timeout_s (30 s) ends a kernel that never connects: for slow hosts raise both, launch_timeout_s no lower than $MathLinkTimeout."
RelayMachineArguments::usage = "RelayMachineArguments[host, n, kernel, relay, opts] is the argument list of the RemoteMachine that RelayMachine builds."
RelayConnect::usage = "RelayConnect[host] opens relay's connection to host in the background (relay connect), ahead of launches. RelayConnect[host, relay, n, kernel] also says n compute kernels of kernel (\"\": the host's) follow: their forwards are asked for and their kernel looked for at once, so the first Run need not wait for its kernel's pid, and a Slurm host is asked for room for all n in one job."
RelayConnectArguments::usage = "RelayConnectArguments[host, n, kernel] is the argument list of the relay connect that RelayConnect runs."
RelayStatus::usage = "RelayStatus[] gives relay's status (hosts, kernels, forwards) as an Association."
RelayCheck::usage = "RelayCheck[host] runs relay check host (every point where a launch on host can fail, in order) and gives its results as an Association; RelayCheck[host, kernel] checks that kernel path."
RelayLaunchCommand::usage = "RelayLaunchCommand[host, kernel, relay] is the Launch command of a relay kernel configuration."
RelayRemoteCommand::usage = "RelayRemoteCommand[kernel, relay] is the $RemoteCommand template that launches compute kernels through relay."
RelayKernelPath::usage = "RelayKernelPath[os, version] is where a default install of that version puts the kernel on a host running os (\"Unix\" or \"MacOSX\"), for the \"KernelPath\" option."
RelayLinkName::usage = "RelayLinkName[{dataPort, host}, {messagePort, host}] is a TCPIP link name."
$RelayCommand::usage = "$RelayCommand is the relay executable RelayTools runs (set by relay wolfram install)."
RelayTools::norelay = "relay failed: `1`"
RelayTools::windows = "relay runs the front end's side on macOS and Linux only (its shim needs Unix sockets and signals)."

Begin["`Private`"]

If[!StringQ[$RelayCommand], $RelayCommand = "relay"];

$mlopenArguments = "-LinkMode Listen -LinkProtocol TCPIP -LinkOptions MLDontInteract -LinkHost 127.0.0.1";

quote[word_String] := StringJoin["\"", StringReplace[word, "\"" -> "\\\""], "\""]

RelayLaunchCommand[host_String, kernel_String, relay_String] :=
  StringJoin[quote[relay], " launch ", quote[host], " ", quote[kernel], " \"`linkname`\""]

RelayRemoteCommand[kernel_String, relay_String] :=
  StringJoin[quote[relay], " launch --compute \"`1`\" ", quote[kernel], " \"`2`\""]

windowsQ[] := $OperatingSystem === "Windows"

versionString[version_] := Module[{tenths = Round[10 version]},
  StringJoin[ToString[Quotient[tenths, 10]], ".", ToString[Mod[tenths, 10]]]]

(* docs/topology.md section 6: from 14.1 the product is Wolfram, before it Mathematica *)
RelayKernelPath[os_String, version_] := Which[
  os === "MacOSX" && version >= 14.1, "/Applications/Wolfram.app/Contents/MacOS/WolframKernel",
  os === "MacOSX", "/Applications/Mathematica.app/Contents/MacOS/WolframKernel",
  True, StringJoin["/usr/local/Wolfram/", If[version >= 14.1, "Wolfram/", "Mathematica/"],
                   versionString[version], "/Executables/WolframKernel"]
]

RelayLinkName[{dataPort_Integer, dataHost_String}, {messagePort_Integer, messageHost_String}] :=
  StringJoin[ToString[dataPort], "@", dataHost, ",", ToString[messagePort], "@", messageHost]

Options[RelaySetupKernelConfiguration] = {"KernelPath" -> "", "RelayCommand" -> Automatic};

RelaySetupKernelConfiguration[name_String, host_String, OptionsPattern[]] := Module[
  {kernel, relay, config, names, position},
  If[windowsQ[], Message[RelayTools::windows]; Return[$Failed]];
  kernel = OptionValue["KernelPath"];
  relay = Replace[OptionValue["RelayCommand"], Automatic :> $RelayCommand];
  config = {
    "RemoteMachine" -> True,
    "TranslateReturns" -> True,
    "AppendNameToCellLabel" -> True,
    "AutoStartOnLaunch" -> False,
    "MLOpenArguments" -> $mlopenArguments,
    "LoginScript" -> RelayLaunchCommand[host, kernel, relay]
  };
  names = EvaluatorNames /. Options[$FrontEnd, EvaluatorNames];
  position = Position[names, Rule[name, _], {1}];
  names = If[position === {}, Append[names, name -> config],
                              ReplacePart[names, First[position] -> (name -> config)]];
  SetOptions[$FrontEnd, EvaluatorNames -> names];
  RelayConnect[host, relay];  (* the first launch then finds the host's connection warm *)
  name -> config
]

(* A configuration is relay's when its Launch command is one RelayLaunchCommand builds. *)
RelayKernelConfigurationQ[config_List] := With[
  {script = "LoginScript" /. Append[Cases[config, _Rule], "LoginScript" -> ""]},
  StringQ[script] && StringMatchQ[script, "\"" ~~ __ ~~ "\" launch \"" ~~ __ ~~ "\"`linkname`\""]]
RelayKernelConfigurationQ[___] := False

RelayDropKernelConfigurations[names_List, which_] := Module[{drop},
  drop = Select[names, MatchQ[#, _Rule] && (which === All || First[#] === which) &&
                       RelayKernelConfigurationQ[Last[#]] &];
  {Select[names, !MemberQ[drop, #] &], First /@ drop}
]

RelayRemoveKernelConfiguration[which : (_String | All)] := Module[{names, result},
  names = EvaluatorNames /. Options[$FrontEnd, EvaluatorNames];
  result = RelayDropKernelConfigurations[names, which];
  If[result[[2]] =!= {}, SetOptions[$FrontEnd, EvaluatorNames -> result[[1]]]];
  result[[2]]
]

Options[RelayMachine] = {"KernelPath" -> "", "RelayCommand" -> Automatic, "Connect" -> True};

(* Pure: what RemoteMachine gets. Options RelayMachine does not know are RemoteMachine's
   (KernelSpeed, LinkHost, ...) and pass through, before relay's LinkHost so a user's wins. *)
RelayMachineArguments[host_String, n_Integer, kernel_String, relay_String,
    opts___?OptionQ] := Module[{own = ToString[First[#]] & /@ Options[RelayMachine]},
  Join[{host, RelayRemoteCommand[kernel, relay], n},
    Select[Flatten[{opts}], !MemberQ[own, ToString[First[#]]] &],
    {System`LinkHost -> "127.0.0.1"}]]

(* Pure: relay connect's arguments. n compute kernels of kernel ("": the host's) follow:
   relay asks for their forwards and looks for the kernel at once (relay connect --kernels n
   --kernel k), and on a Slurm host asks for room for all n in one job. *)
RelayConnectArguments[host_String, n_Integer : 0, kernel_String : ""] :=
  Join[{"connect", host}, If[n > 0, {"--kernels", ToString[n]}, {}],
    If[n > 0 && kernel =!= "", {"--kernel", kernel}, {}]]

RelayConnect[host_String] := RelayConnect[host, $RelayCommand]
RelayConnect[host_String, relay_String, n_Integer : 0, kernel_String : ""] :=
  Quiet[Check[StartProcess[Prepend[RelayConnectArguments[host, n, kernel], relay]], $Failed]]

RelayMachine[host_String, n_Integer : 1, opts : OptionsPattern[]] := Module[{kernel, relay},
  If[windowsQ[], Message[RelayTools::windows]; Return[$Failed]];
  Needs["SubKernels`RemoteKernels`"];
  kernel = OptionValue["KernelPath"];
  relay = Replace[OptionValue["RelayCommand"], Automatic :> $RelayCommand];
  If[TrueQ[OptionValue["Connect"]], RelayConnect[host, relay, n, kernel]];
  SubKernels`RemoteKernels`RemoteMachine @@ RelayMachineArguments[host, n, kernel, relay, opts]
]

(* Head[...] === Association, not AssociationQ (10.1); "JSON" rules, not "RawJSON" (10.2?) *)
toAssociations[json_] := Replace[json, rules : {__Rule} :> Association[rules], {0, Infinity}]

(* relay's JSON answer to args, as Associations; exit codes in ok count as answers
   (relay check exits 1 when a check failed: the results are still the answer) *)
relayJSON[args_List, ok_List] := Module[{result},
  result = RunProcess[Join[{$RelayCommand}, args]];
  If[Head[result] =!= Association || !MemberQ[ok, result["ExitCode"]] ||
      StringLength[result["StandardOutput"]] === 0,
    Message[RelayTools::norelay,
      If[Head[result] === Association, result["StandardError"], $RelayCommand]];
    Return[$Failed]];
  toAssociations[ImportString[result["StandardOutput"], "JSON"]]
]

RelayStatus[] := relayJSON[{"status", "--json"}, {0}]

RelayCheck[host_String, kernel_String : ""] :=
  relayJSON[Join[{"check", host, "--json"}, If[kernel === "", {}, {"--kernel", kernel}]], {0, 1}]

End[]

EndPackage[]
