(* ::Package:: *)

(* RelayTools`: relay for the Mathematica front end and controller kernel.

   RelaySetupKernelConfiguration writes a kernel configuration whose Launch command is
   `relay launch`; RelayMachine is a RemoteMachine for pools of parallel compute kernels whose
   $RemoteCommand template is `relay launch --compute`; RelayStatus reads `relay status`.
   The pure string builders here have Python twins in relay/frontendconfig.py, and a test
   evaluates both (under Mathics3) and compares them. *)

BeginPackage["RelayTools`"]

RelaySetupKernelConfiguration::usage = "RelaySetupKernelConfiguration[name, host] adds (or replaces) the front end kernel configuration name, which runs its kernel on host through relay. Options: \"KernelPath\", \"OperatingSystem\", \"VersionNumber\", \"RelayCommand\"."
RelayMachine::usage = "RelayMachine[host, n, opts] is a RemoteMachine of n compute kernels on host, launched through relay: LaunchKernels[RelayMachine[\"myhost\", 8]]. RemoteMachine options (KernelSpeed, LinkHost, ...) pass through. Evaluating it runs relay connect host in the background, so the first kernel starts on a warm connection. Each Run returns once its kernel is started; Parallel`Settings`$MathLinkTimeout (15 s) must cover a kernel's start-up, and relay's launch_timeout_s (30 s) ends a kernel that never connects: for slow hosts raise both, launch_timeout_s no lower than $MathLinkTimeout."
RelayMachineArguments::usage = "RelayMachineArguments[host, n, kernel, relay, os, opts] is the argument list of the RemoteMachine that RelayMachine builds."
RelayConnect::usage = "RelayConnect[host] opens relay's connection to host in the background (relay connect), ahead of launches."
RelayStatus::usage = "RelayStatus[] gives relay's status (hosts, kernels, forwards) as an Association."
RelayLaunchCommand::usage = "RelayLaunchCommand[host, kernel, relay] is the Launch command of a relay kernel configuration."
RelayRemoteCommand::usage = "RelayRemoteCommand[kernel, relay, os] is the $RemoteCommand template that launches compute kernels through relay."
RelayKernelPath::usage = "RelayKernelPath[os, version] is the default path of the kernel executable."
RelayLinkName::usage = "RelayLinkName[{dataPort, host}, {messagePort, host}] is a TCPIP link name."
RelayUserBaseDirectory::usage = "RelayUserBaseDirectory[os, home, appdata] is the default $UserBaseDirectory."
$RelayCommand::usage = "$RelayCommand is the relay executable RelayTools runs (set by relay wolfram install)."
RelayTools::norelay = "relay failed: `1`"

Begin["`Private`"]

If[!StringQ[$RelayCommand], $RelayCommand = "relay"];

$mlopenArguments = "-LinkMode Listen -LinkProtocol TCPIP -LinkOptions MLDontInteract -LinkHost 127.0.0.1";

quote[word_String] := StringJoin["\"", StringReplace[word, "\"" -> "\\\""], "\""]

RelayLaunchCommand[host_String, kernel_String, relay_String] :=
  StringJoin[quote[relay], " launch ", quote[host], " ", quote[kernel], " \"`linkname`\""]

RelayRemoteCommand[kernel_String, relay_String, os_String] := Module[{command},
  command = StringJoin[quote[relay], " launch --compute \"`1`\" ", quote[kernel], " \"`2`\""];
  (* Run hands the line to cmd.exe on Windows, which strips one outer pair of quotes *)
  If[os === "Windows", StringJoin["\"", command, "\""], command]
]

versionString[version_] := Module[{tenths = Round[10 version]},
  StringJoin[ToString[Quotient[tenths, 10]], ".", ToString[Mod[tenths, 10]]]]

RelayKernelPath[os_String, version_] := Which[
  os === "MacOSX", "/Applications/Mathematica.app/Contents/MacOS/WolframKernel",
  os === "Windows", StringJoin["C:\\Program Files\\Wolfram Research\\Mathematica\\",
                               versionString[version], "\\WolframKernel.exe"],
  True, StringJoin["/usr/local/Wolfram/Mathematica/", versionString[version],
                   "/Executables/WolframKernel"]
]

RelayLinkName[{dataPort_Integer, dataHost_String}, {messagePort_Integer, messageHost_String}] :=
  StringJoin[ToString[dataPort], "@", dataHost, ",", ToString[messagePort], "@", messageHost]

RelayUserBaseDirectory[os_String, home_String, appdata_String] := Which[
  os === "MacOSX", StringJoin[home, "/Library/Mathematica"],
  os === "Windows", StringJoin[If[appdata === "", StringJoin[home, "\\AppData\\Roaming"], appdata],
                               "\\Mathematica"],
  True, StringJoin[home, "/.Mathematica"]
]

Options[RelaySetupKernelConfiguration] = {"KernelPath" -> Automatic,
  "OperatingSystem" -> Automatic, "VersionNumber" -> Automatic, "RelayCommand" -> Automatic};

RelaySetupKernelConfiguration[name_String, host_String, OptionsPattern[]] := Module[
  {os, version, kernel, relay, config, names, position},
  os = Replace[OptionValue["OperatingSystem"],
    Automatic :> SystemInformation["FrontEnd", "OperatingSystem"]];
  version = Replace[OptionValue["VersionNumber"],
    Automatic :> SystemInformation["FrontEnd", "VersionNumber"]];
  kernel = Replace[OptionValue["KernelPath"], Automatic :> RelayKernelPath[os, version]];
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

Options[RelayMachine] = {"KernelPath" -> Automatic, "OperatingSystem" -> Automatic,
  "VersionNumber" -> Automatic, "RelayCommand" -> Automatic, "Connect" -> True};

(* Pure: what RemoteMachine gets. Options RelayMachine does not know are RemoteMachine's
   (KernelSpeed, LinkHost, ...) and pass through, before relay's LinkHost so a user's wins. *)
RelayMachineArguments[host_String, n_Integer, kernel_String, relay_String, os_String,
    opts___?OptionQ] := Module[{own = ToString[First[#]] & /@ Options[RelayMachine]},
  Join[{host, RelayRemoteCommand[kernel, relay, os], n},
    Select[Flatten[{opts}], !MemberQ[own, ToString[First[#]]] &],
    {System`LinkHost -> "127.0.0.1"}]]

RelayConnect[host_String] := RelayConnect[host, $RelayCommand]
RelayConnect[host_String, relay_String] :=
  Quiet[Check[StartProcess[{relay, "connect", host}], $Failed]]

RelayMachine[host_String, n_Integer : 1, opts : OptionsPattern[]] := Module[
  {os, version, kernel, relay},
  Needs["SubKernels`RemoteKernels`"];
  os = Replace[OptionValue["OperatingSystem"], Automatic :> $OperatingSystem];
  version = Replace[OptionValue["VersionNumber"], Automatic :> $VersionNumber];
  kernel = Replace[OptionValue["KernelPath"], Automatic :> RelayKernelPath[os, version]];
  relay = Replace[OptionValue["RelayCommand"], Automatic :> $RelayCommand];
  If[TrueQ[OptionValue["Connect"]], RelayConnect[host, relay]];
  SubKernels`RemoteKernels`RemoteMachine @@
    RelayMachineArguments[host, n, kernel, relay, $OperatingSystem, opts]
]

RelayStatus[] := Module[{result},
  result = RunProcess[{$RelayCommand, "status", "--json"}];
  If[!AssociationQ[result] || result["ExitCode"] =!= 0,
    Message[RelayTools::norelay, If[AssociationQ[result], result["StandardError"], $RelayCommand]];
    Return[$Failed]];
  ImportString[result["StandardOutput"], "RawJSON"]
]

End[]

EndPackage[]
